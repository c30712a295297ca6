"""Authorization rules for the ``user_tasks`` permissions, with django-rules.

Not registered by default (a site may want its own); register them once, e.g. from an app's
``ready()``::

    import user_tasks.rules
    user_tasks.rules.add_rules()

and add ``rules.permissions.ObjectPermissionBackend`` to ``AUTHENTICATION_BACKENDS``.
"""

import rules


@rules.predicate
def is_status_creator(user, status=None):
    """``True`` when no status is given or ``user`` started it."""
    if not status:
        return True
    return status.user_id == user.id


@rules.predicate
def is_artifact_creator(user, artifact=None):
    """``True`` when no artifact is given or ``user`` started its task."""
    if not artifact:
        return True
    return is_status_creator(user, artifact.status)


STATUS_PERMISSION = is_status_creator | rules.predicates.is_superuser
ARTIFACT_PERMISSION = is_artifact_creator | rules.predicates.is_superuser


def add_rules():
    """Only superusers and the user who started a task may view, cancel or delete it and view
    its artifacts; only superusers may change a status or change or delete an artifact.
    Calling it again is harmless."""
    rules.set_perm("user_tasks.view_usertaskstatus", STATUS_PERMISSION)
    rules.set_perm("user_tasks.cancel_usertaskstatus", STATUS_PERMISSION)
    rules.set_perm("user_tasks.change_usertaskstatus", rules.predicates.is_superuser)
    rules.set_perm("user_tasks.delete_usertaskstatus", STATUS_PERMISSION)
    rules.set_perm("user_tasks.view_usertaskartifact", ARTIFACT_PERMISSION)
    rules.set_perm("user_tasks.change_usertaskartifact", rules.predicates.is_superuser)
    rules.set_perm("user_tasks.delete_usertaskartifact", rules.predicates.is_superuser)
