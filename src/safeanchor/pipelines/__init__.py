"""Recipes: numbered stages run by one stage runner (:mod:`.stages`) — the safety-alignment recipe
(:mod:`.safety_alignment`) and the experiment behind ``safeanchor demo`` / ``bench`` (:mod:`.experiment`).

The top of the library: recipes call the trainer, the evaluation and the direction code; nothing
below imports a recipe (``tests/test_layering.py``)."""
