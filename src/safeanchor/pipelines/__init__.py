"""Multi-stage recipes that write ``<out>/<stage>/`` artifacts: the alignment stage (``align``)."""
