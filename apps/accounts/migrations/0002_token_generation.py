# Tokens carry the user's token generation, raised when the password changes or the user is
# deactivated, so that the access tokens issued before are refused at once
# (apps.accounts.services.user_tokens_revoke). A constant default: no table rewrite.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("accounts", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="user",
            name="token_generation",
            field=models.PositiveIntegerField(default=0),
        ),
    ]
