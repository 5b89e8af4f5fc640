"""outpost: one binary that supervises agents and keeps their state through crashes."""

__version__ = "0.1.0"
