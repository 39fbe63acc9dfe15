"""Account services, called directly."""

from datetime import timedelta

from django.utils import timezone
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken
from rest_framework_simplejwt.tokens import RefreshToken

from apps.accounts.models import User
from apps.accounts.services import user_tokens_revoke


def test_revoking_blacklists_the_users_live_refresh_tokens_only(user: User, other_user: User):
    live = [RefreshToken.for_user(user) for _ in range(3)]
    logged_out = RefreshToken.for_user(user)
    logged_out.blacklist()
    expired = RefreshToken.for_user(user)
    OutstandingToken.objects.filter(jti=expired["jti"]).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    theirs = RefreshToken.for_user(other_user)

    assert user_tokens_revoke(user_id=user.id) == len(live)

    blacklisted = set(BlacklistedToken.objects.values_list("token__jti", flat=True))
    assert blacklisted == {token["jti"] for token in [*live, logged_out]}
    assert theirs["jti"] not in blacklisted
    assert user_tokens_revoke(user_id=user.id) == 0  # nothing left to revoke
