"""Generation, judges, safety and task evaluation."""
