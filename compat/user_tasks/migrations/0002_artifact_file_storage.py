"""Nothing to do here: django-user-tasks' artifact storage setting: usertasks resolves the storage itself.

Kept so that migrations depending on ``("user_tasks", "0002_artifact_file_storage")`` resolve (see ``0001_initial``).
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("user_tasks", "0001_initial")]

    operations = []
