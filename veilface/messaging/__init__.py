"""The messaging layer: the Celery application, one typed message per task, signed task messages."""
