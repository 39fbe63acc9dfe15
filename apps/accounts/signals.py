"""A password change or a deactivation ends the user's sessions: refresh and access tokens.

A refresh token lives JWT_REFRESH_LIFETIME_SECONDS (7 days) and rotates: one stolen kept working
after the victim's password was reset, and an access token 15 minutes more. Whatever path saves
the user through the model (the admin's password form, `manage.py changepassword`,
`user.set_password(); user.save()`), a new password hash or `is_active` turned off blacklists all
the user's refresh tokens and raises the user's token generation, which refuses every access
token issued before, right after the save and in its transaction (User.save opens one, so the
new password and the revocation commit together; services.user_tokens_revoke, which also lets a
refresh under way finish first; a login under way holds the user's row from its password check
to its token, so the change waits for it too).

Not a change of password: Django re-hashing the right password at a login, when the preferred
hasher or its iteration count changed (every Django upgrade raises PBKDF2's); that would log every
user out of every other device. A write that skips the model's signals (`QuerySet.update()`, SQL)
revokes nothing.
"""

from typing import Any

from django.contrib.auth.hashers import get_hasher, identify_hasher
from django.db.models import F, Value
from django.db.models.functions import Greatest
from django.db.models.signals import post_save, pre_save
from django.dispatch import receiver

from apps.accounts.models import User
from apps.accounts.services import user_tokens_revoke

_REVOKING_FIELDS = frozenset({"password", "is_active"})


@receiver(pre_save, sender=User, dispatch_uid="accounts.note_revoking_change")
def _note_revoking_change(
    sender: type[User], instance: User, raw: bool, update_fields: Any, **kwargs: Any
) -> None:
    instance._revokes_refresh_tokens = False  # type: ignore[attr-defined]
    if raw or instance._state.adding or instance.pk is None:
        return
    writes_generation = update_fields is None or "token_generation" in update_fields
    fields = _REVOKING_FIELDS if update_fields is None else _REVOKING_FIELDS & set(update_fields)
    if not fields:
        if writes_generation:  # update_fields names it: an UPDATE, never an INSERT
            _keep_generation(instance)
        return  # a save of other columns only: no query
    old = User.objects.filter(pk=instance.pk).values(*fields).first()
    if old is None:
        return  # no row: the save inserts one (an expression that reads a column cannot)
    if writes_generation:
        _keep_generation(instance)
    deactivated = "is_active" in fields and old["is_active"] and not instance.is_active
    new_password = (
        "password" in fields
        and old["password"] != instance.password
        and not _is_hash_upgrade(instance, old["password"], update_fields)
    )
    instance._revokes_refresh_tokens = bool(deactivated or new_password)  # type: ignore[attr-defined]


@receiver(post_save, sender=User, dispatch_uid="accounts.revoke_refresh_tokens")
def _revoke_refresh_tokens(sender: type[User], instance: User, **kwargs: Any) -> None:
    if getattr(instance, "_revokes_refresh_tokens", False):
        instance._revokes_refresh_tokens = False  # type: ignore[attr-defined]
        user_tokens_revoke(user_id=instance.pk)
    if hasattr(instance.__dict__.get("token_generation"), "resolve_expression"):
        # The value the UPDATE wrote (_keep_generation), or user_tokens_revoke's after it.
        instance.refresh_from_db(fields=["token_generation"])


def _keep_generation(user: User) -> None:
    """Make the save write GREATEST(the column, the object's generation): the generation only
    goes up. user_tokens_revoke raises it with an UPDATE that the object saved (or one read
    before, as by another admin's form) never saw, and a plain save of that object wrote the
    old generation back: every access token issued before the change worked again."""
    if isinstance(user.token_generation, int):  # not already an expression (a failed save)
        user.token_generation = Greatest(F("token_generation"), Value(user.token_generation))


def _is_hash_upgrade(user: User, old_hash: str, update_fields: Any) -> bool:
    """Whether this save is Django's check_password storing the same password under the preferred
    hasher: it saves the password alone, after set_password but with `_password` cleared
    ("hash upgrades shouldn't be considered password changes"), and only for a hash that
    check_password would upgrade."""
    if getattr(user, "_password", None) is not None or update_fields is None:
        return False
    if set(update_fields) != {"password"}:
        return False
    try:
        old_hasher = identify_hasher(old_hash)
        # An upgrade stores what the preferred hasher makes now: anything else saved alone over
        # an outdated hash (set_unusable_password(), a hash of another kind) is a new password.
        new_hasher = identify_hasher(user.password)
    except ValueError:  # unusable, or a hasher no longer configured
        return False
    preferred = get_hasher("default")
    if new_hasher.algorithm != preferred.algorithm or preferred.must_update(user.password):
        return False
    return old_hasher.algorithm != preferred.algorithm or preferred.must_update(old_hash)
