"""OpenAPI descriptions drf-spectacular cannot derive: our JWT authentication and token views.

drf-spectacular's simplejwt extensions match simplejwt's own classes only, not our subclasses.
"""

from drf_spectacular.contrib.rest_framework_simplejwt import (
    SimpleJWTScheme,
    TokenObtainPairSerializerExtension,
    TokenRefreshSerializerExtension,
)


class BearerOrBareJWTScheme(SimpleJWTScheme):
    target_class = "apps.accounts.authentication.BearerOrBareJWTAuthentication"
    name = "jwtAuth"


class EmailTokenObtainPairSerializerExtension(TokenObtainPairSerializerExtension):
    target_class = "apps.accounts.api.EmailTokenObtainPairSerializer"


class UserCheckingTokenRefreshSerializerExtension(TokenRefreshSerializerExtension):
    target_class = "apps.accounts.api.UserCheckingTokenRefreshSerializer"
