"""Widgets of the console: each renders plain data from `console.tui.data`."""
