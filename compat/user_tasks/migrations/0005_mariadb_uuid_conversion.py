"""Nothing to do here: django-user-tasks' UUID columns on MariaDB: usertasks' tables have native ones.

Kept so that migrations depending on ``("user_tasks", "0005_mariadb_uuid_conversion")`` resolve (see ``0001_initial``).
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("user_tasks", "0004_url_textfield")]

    operations = []
