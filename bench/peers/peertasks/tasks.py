from celery import shared_task
from user_tasks.tasks import UserTask


@shared_task(base=UserTask, bind=True)
def noop(self, user_id):
    """A no-op user task (django-user-tasks records its states through Celery's signals)."""
