import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    # As a project's migration written while django-user-tasks was installed.
    dependencies = [("user_tasks", "0004_url_textfield")]

    operations = [
        migrations.CreateModel(
            name="CourseImport",
            fields=[
                ("id", models.AutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(max_length=100)),
                (
                    "task",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="+", to="user_tasks.usertaskstatus"
                    ),
                ),
            ],
        ),
        migrations.CreateModel(
            name="LatestReport",
            fields=[
                ("id", models.AutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(max_length=100)),
                (
                    "task",
                    models.OneToOneField(
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to="user_tasks.usertaskstatus",
                    ),
                ),
            ],
        ),
    ]
