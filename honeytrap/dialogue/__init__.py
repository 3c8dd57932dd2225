"""Dialogues: sans-IO conversations that follow the client (issue 12). See base.py."""
