"""Nothing to do here: django-user-tasks' longer artifact URLs: usertasks' ``url`` is a text field.

Kept so that migrations depending on ``("user_tasks", "0003_url_max_length")`` resolve (see ``0001_initial``).
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("user_tasks", "0002_artifact_file_storage")]

    operations = []
