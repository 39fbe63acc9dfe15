"""Register, log in, refresh, and who-am-I."""

from typing import Any

from django.core.exceptions import ObjectDoesNotExist
from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt.serializers import TokenObtainPairSerializer, TokenRefreshSerializer
from rest_framework_simplejwt.views import TokenObtainPairView, TokenRefreshView

from apps.accounts.services import user_register


class UserOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    email = serializers.EmailField()
    is_staff = serializers.BooleanField()
    date_joined = serializers.DateTimeField()


class RegisterView(APIView):
    permission_classes = [AllowAny]
    authentication_classes: list[Any] = []

    @extend_schema_serializer(component_name="Register")
    class InputSerializer(serializers.Serializer):
        email = serializers.EmailField(max_length=254)
        password = serializers.CharField(max_length=128, trim_whitespace=False)

    @extend_schema(request=InputSerializer, responses={201: UserOutputSerializer})
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = user_register(**data.validated_data)
        return Response(UserOutputSerializer(user).data, status=status.HTTP_201_CREATED)


@extend_schema_serializer(component_name="TokenObtainPair")
class EmailTokenObtainPairSerializer(TokenObtainPairSerializer):
    default_error_messages = {"no_active_account": "Wrong email or password."}


class LoginView(TokenObtainPairView):
    """Trade email and password for an access and a refresh JWT."""

    serializer_class = EmailTokenObtainPairSerializer
    authentication_classes = ()


# simplejwt's refresh, with a deleted user (or a user id that is no id) a 401 and not a 500:
# simplejwt looks the token's user up with `.get()` and lets DoesNotExist through.
@extend_schema_serializer(component_name="TokenRefresh")
class UserCheckingTokenRefreshSerializer(TokenRefreshSerializer):
    def validate(self, attrs: dict[str, Any]) -> dict[str, str]:
        try:
            return super().validate(attrs)
        except (ObjectDoesNotExist, ValueError, TypeError, DjangoValidationError) as exc:
            raise AuthenticationFailed(
                self.error_messages["no_active_account"], "no_active_account"
            ) from exc


class RefreshView(TokenRefreshView):
    serializer_class = UserCheckingTokenRefreshSerializer
    authentication_classes = ()


class MeView(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(responses={200: UserOutputSerializer})
    def get(self, request: Request) -> Response:
        return Response(UserOutputSerializer(request.user).data)
