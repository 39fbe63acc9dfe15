from django.urls import path

from apps.accounts.api import (
    LoginView,
    LogoutAllView,
    LogoutView,
    MeView,
    PasswordChangeView,
    RefreshView,
    RegisterView,
)

urlpatterns = [
    path("register", RegisterView.as_view(), name="register"),
    path("login", LoginView.as_view(), name="login"),
    path("token/refresh", RefreshView.as_view(), name="token-refresh"),
    path("logout", LogoutView.as_view(), name="logout"),
    path("logout/all", LogoutAllView.as_view(), name="logout-all"),
    path("password", PasswordChangeView.as_view(), name="password-change"),
    path("me", MeView.as_view(), name="me"),
]
