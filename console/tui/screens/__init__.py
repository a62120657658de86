"""Screens of the console: main (fleet), worker detail, logs, timeline, help, dialogs."""
