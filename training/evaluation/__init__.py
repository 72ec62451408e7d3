"""Evaluation of KOSMOS-G pack checkpoints: DreamBench (DINO, CLIP-I, CLIP-T), MS-COCO zero-shot FID, layout
metrics, and the report writer (JSON + Markdown + plots). Every model is loaded from a local folder or file."""
