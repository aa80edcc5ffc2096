"""Custom actions of the Switchboard bot, served by ``python -m rasa_sdk --actions actions``.

Runs in the Rasa virtualenv (Python 3.10, SQLAlchemy 1.4), not in the app's.
"""
