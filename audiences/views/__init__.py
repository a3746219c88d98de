"""Consumer-facing views: signup and confirmation (signup.py), preference centre and
unsubscribe (preferences.py)."""
