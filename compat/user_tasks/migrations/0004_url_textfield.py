"""Nothing to do here: django-user-tasks' artifact URL as a text field: usertasks' is one already.

Kept so that migrations depending on ``("user_tasks", "0004_url_textfield")`` resolve (see ``0001_initial``).
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("user_tasks", "0003_url_max_length")]

    operations = []
