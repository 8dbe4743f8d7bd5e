"""Work the notifications services want done in a worker, for notifications.tasks to queue once the transaction that
asked commits (notifications.apps connects them), so that the services never import the tasks that call them:
`delivery_wanted(delivery_id, countdown)`, a webhook delivery to POST (after `countdown` seconds, for a retry), and
`email_wanted(event_pk)`, the customer's email of a job that completed or expired."""

from django.dispatch import Signal

delivery_wanted = Signal()
email_wanted = Signal()
