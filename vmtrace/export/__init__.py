"""Exports of a trace's analyses to other tools' formats (Perfetto)."""
