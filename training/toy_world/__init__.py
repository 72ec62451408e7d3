"""A synthetic world small enough to train every KOSMOS-G stage on a CPU, with a scorer it defines exactly.

Scenes: one subject (a shape variant in a palette colour) on a place background. Captions name the place and the
class word ("a toy on the beach"); the subject's look lives in the image. See docs/evaluation.md.
"""
