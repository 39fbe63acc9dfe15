"""Register, log in, refresh, log out (here or everywhere), change the password, and who-am-I."""

from typing import Any

from django.core.exceptions import ObjectDoesNotExist
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt.serializers import (
    TokenBlacklistSerializer,
    TokenObtainPairSerializer,
    TokenRefreshSerializer,
)
from rest_framework_simplejwt.settings import api_settings as jwt_settings
from rest_framework_simplejwt.token_blacklist.models import OutstandingToken
from rest_framework_simplejwt.views import (
    TokenBlacklistView,
    TokenObtainPairView,
    TokenRefreshView,
)

from apps.accounts.authentication import BearerOrBareJWTAuthentication, GenerationRefreshToken
from apps.accounts.services import (
    user_lock,
    user_lock_by_email,
    user_password_change,
    user_register,
    user_tokens_revoke,
)
from apps.accounts.throttles import (
    LoginAccountThrottle,
    LoginAddressThrottle,
    PasswordChangeUserThrottle,
    RegisterAddressThrottle,
)
from apps.core.api import StrictInputSerializer, TextField
from apps.core.throttling import UserRateThrottle


class UserOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    email = serializers.EmailField()
    is_staff = serializers.BooleanField()
    date_joined = serializers.DateTimeField()


class RegisterView(APIView):
    permission_classes = [AllowAny]
    authentication_classes: list[Any] = []
    throttle_classes = [RegisterAddressThrottle]

    @extend_schema_serializer(component_name="Register")
    class InputSerializer(StrictInputSerializer):
        email = serializers.EmailField(max_length=254)
        password = TextField(max_length=128, trim_whitespace=False)

    @extend_schema(request=InputSerializer, responses={201: UserOutputSerializer})
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = user_register(**data.validated_data)
        return Response(UserOutputSerializer(user).data, status=status.HTTP_201_CREATED)


@extend_schema_serializer(component_name="TokenObtainPair")
class EmailTokenObtainPairSerializer(StrictInputSerializer, TokenObtainPairSerializer):
    default_error_messages = {"no_active_account": "Wrong email or password."}
    # With the user's token generation, read under the lock validate() holds (a password change
    # waits for it, then raises the generation).
    token_class = GenerationRefreshToken

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # simplejwt's fields turn a JSON number into text (a 401 for "password": 123): strings.
        self.fields[self.username_field] = TextField(write_only=True)
        self.fields["password"] = TextField(
            write_only=True, trim_whitespace=False, style={"input_type": "password"}
        )

    def validate(self, attrs: dict[str, Any]) -> dict[str, str]:
        # The user's row is locked before the password check, until the refresh token's row is
        # committed: a password change meanwhile (its UPDATE takes that lock) waits, then finds
        # this login's token and blacklists it (apps.accounts.signals). Without it, a change that
        # committed between the check of the old password and the token's row left the token out.
        with transaction.atomic():
            email = attrs.get(self.username_field)
            if isinstance(email, str):
                user_lock_by_email(email=email)
            return super().validate(attrs)


class FirstRefusalThrottlesMixin:
    """Ask the throttles in order and stop at the first refusal (DRF asks every one): a request
    refused by one limit does not also use up the attempts the next one counts."""

    def check_throttles(self, request: Request) -> None:
        for throttle in self.get_throttles():  # type: ignore[attr-defined]
            if not throttle.allow_request(request, self):
                self.throttled(request, throttle.wait() or 1.0)  # type: ignore[attr-defined]


class LoginView(FirstRefusalThrottlesMixin, TokenObtainPairView):
    """Trade email and password for an access and a refresh JWT."""

    serializer_class = EmailTokenObtainPairSerializer
    authentication_classes = ()
    # An attempt refused for its address does not also use up the account's attempts.
    throttle_classes = [LoginAddressThrottle, LoginAccountThrottle]


# simplejwt's refresh, with a deleted user (or a user id that is no id) a 401 and not a 500:
# simplejwt looks the token's user up with `.get()` and lets DoesNotExist through.
# Refresh tokens rotate (ROTATE_REFRESH_TOKENS): the one used is blacklisted, and the answer
# carries its successor. simplejwt checks the blacklist and then adds to it, so two concurrent
# refreshes with one token both passed the check and both got a new token (a stolen token kept
# working next to the owner's); the token's row is locked here for the check-and-blacklist.
# The user's row is locked first, as the blacklisting after a password change or a deactivation
# locks it (services.user_tokens_revoke): one done meanwhile has blacklisted this token,
# and one that comes after this refresh commits finds its successor to blacklist (a row not yet
# committed while it looked).
@extend_schema_serializer(component_name="TokenRefresh")
class UserCheckingTokenRefreshSerializer(StrictInputSerializer, TokenRefreshSerializer):
    def validate(self, attrs: dict[str, Any]) -> dict[str, str]:
        try:
            with transaction.atomic():
                token = self.token_class(attrs["refresh"])  # signature, expiry, token type
                jti = token.payload.get(jwt_settings.JTI_CLAIM)
                user_id = token.payload.get(jwt_settings.USER_ID_CLAIM)
                if user_id is not None:
                    user_lock(user_id=user_id)
                # order_by(): the model's ordering joins the user table, which FOR UPDATE refuses.
                locked = OutstandingToken.objects.select_for_update().filter(jti=jti).order_by()
                list(locked.values_list("pk", flat=True))
                return super().validate(attrs)  # the blacklist again, now under the lock
        except (ObjectDoesNotExist, ValueError, TypeError, DjangoValidationError) as exc:
            raise AuthenticationFailed(
                self.error_messages["no_active_account"], "no_active_account"
            ) from exc


class RefreshView(TokenRefreshView):
    """Trade a refresh JWT for a new access JWT and a new refresh JWT; the old one stops working."""

    serializer_class = UserCheckingTokenRefreshSerializer
    authentication_classes = ()


@extend_schema_serializer(component_name="Logout")
class LogoutSerializer(StrictInputSerializer, TokenBlacklistSerializer):
    def validate(self, attrs: dict[str, Any]) -> dict[Any, Any]:
        try:
            return super().validate(attrs)
        except (ValueError, TypeError, DjangoValidationError) as exc:  # a user id that is no id
            raise AuthenticationFailed("Token is invalid.", "token_not_valid") from exc


class LogoutView(TokenBlacklistView):
    """Blacklist a refresh token: it can no longer be refreshed. Access tokens already issued stay
    valid until they expire (JWT_ACCESS_LIFETIME_SECONDS), unless the password changes."""

    serializer_class = LogoutSerializer
    authentication_classes = ()

    @extend_schema(request=LogoutSerializer, responses={205: None})
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        super().post(request, *args, **kwargs)  # raises for a bad or already blacklisted token
        return Response(status=status.HTTP_205_RESET_CONTENT)


class LogoutAllView(APIView):
    """End every session of the user, this one included: all the user's refresh tokens are
    blacklisted and every access token issued so far is refused."""

    # Token sessions are what it ends: an admin browser session is none (and no way around CSRF).
    authentication_classes = [BearerOrBareJWTAuthentication]
    permission_classes = [IsAuthenticated]

    @extend_schema_serializer(component_name="LogoutAll")
    class InputSerializer(StrictInputSerializer):
        """No fields: an empty body, or `{}`."""

    @extend_schema(request=InputSerializer, responses={205: None})
    def post(self, request: Request) -> Response:
        self.InputSerializer(data=request.data).is_valid(raise_exception=True)
        user_tokens_revoke(user_id=request.user.pk)  # type: ignore[arg-type]
        return Response(status=status.HTTP_205_RESET_CONTENT)


@extend_schema_serializer(component_name="TokenPair")
class TokenPairOutputSerializer(serializers.Serializer):
    refresh = serializers.CharField()
    access = serializers.CharField()


class PasswordChangeView(FirstRefusalThrottlesMixin, APIView):
    """Change one's own password. Every session of the user ends (as with a new password set in
    the admin); the answer is a new refresh and access token for the caller."""

    # The answer is a token pair: an admin browser session is no way in (nor around CSRF).
    authentication_classes = [BearerOrBareJWTAuthentication]
    permission_classes = [IsAuthenticated]
    # A request the user's general rate refuses uses up no password attempt.
    throttle_classes = [UserRateThrottle, PasswordChangeUserThrottle]

    @extend_schema_serializer(component_name="PasswordChange")
    class InputSerializer(StrictInputSerializer):
        current_password = TextField(max_length=128, trim_whitespace=False)
        new_password = TextField(max_length=128, trim_whitespace=False)

    @extend_schema(request=InputSerializer, responses={200: TokenPairOutputSerializer})
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        tokens = user_password_change(user=request.user, **data.validated_data)  # type: ignore[arg-type]
        return Response(TokenPairOutputSerializer(tokens).data)


class MeView(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(responses={200: UserOutputSerializer})
    def get(self, request: Request) -> Response:
        return Response(UserOutputSerializer(request.user).data)
