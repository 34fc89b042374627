"""The camera simulator: frame sources, shift schedules, corruption, and the publisher."""
