"""The text-to-layout stage ("layout"): trains kosmos_g_core.layout.TextToLayoutModel and exports the single-file
checkpoint that the Load Layout Model node reads.

    OMP_NUM_THREADS=1 python -m training.train --config training/configs/layout.toml
    torchrun --nproc_per_node 8 -m training.train --config training/configs/layout.toml data.source=coco_stuff ...

Config tables it reads (everything else is the shared trainer's):
* [model] preset = a kosmos_g_core.layout.model.PRESETS key ("small" | "small_clip" | "tiny"); init = an exported
  layout .safetensors to start from (optional); mention_tokens = false trains without the parser's (class, count)
  tokens (the model then reads only the caption).
* [data] source = "procedural" (built-in scenes) | "coco_stuff" (captions json + stuffthingmaps folder) |
  "shards" (tar files from training.data.layout.write_shards); batch_size; size (label resolution, default 64);
  train_scenes (procedural, default 20000); seed (procedural data seed, default 0); captions, labels (coco_stuff);
  shards (list of paths); val_scenes (held-out procedural scenes scored at every [sample] step, default 200);
  final_eval_scenes (after the export, both planners scored on this many held-out scenes, printed; default 0);
  loss weights p_full_mask (0.3), token_weight (0.5), edge_weight (0.5).
* [sd15] path: only for text_encoder = "clip" presets, whose captions are encoded by the frozen SD1.5 CLIP text
  encoder (the space KOSMOS-G's AlignerNet writes into).
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import numpy as np
import torch
from torch import Tensor, nn

from kosmos_g_core.layout.learned import LearnedPlanner, load_layout_model, save_layout_model
from kosmos_g_core.layout.metrics import LayoutEvaluator
from kosmos_g_core.layout.model import PRESETS, TextToLayoutModel, WordVocab, layout_losses, mention_batch
from kosmos_g_core.layout.palettes import COCO_PANOPTIC_133
from kosmos_g_core.layout.vocabulary import NUMBER_WORDS, known_words

from ..data.layout import LayoutDataConfig, LayoutLoader, build_dataset, make_scene
from ..distributed import unwrap
from .base import Stage, register, to_device

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=2)
def held_out_procedural(seed: int, count: int, size: int) -> tuple:
    """The held-out scenes scored at every [sample] step, drawn once per run (scene i of a seed never changes)."""
    return tuple(make_scene(seed, i, size) for i in range(count))

# Words every vocabulary has, whatever the data: class words and synonyms, numbers, relation and scene words.
_BASE_WORDS = (
    *known_words(), *NUMBER_WORDS, *(str(i) for i in range(10)), "in", "front", "of", "behind", "along", "above",
    "below", "under", "on", "top", "next", "to", "left", "right", "the", "with", "and", "has", "its", "is", "a",
    "background", "view", "beside", "near", "sky", "blue",
)


class LayoutTraining(nn.Module):
    """What the trainer wraps: the layout model plus the caption encoding; forward(batch) -> (loss, metrics)."""

    stage_name = "layout"

    def __init__(self, model: TextToLayoutModel, vocab: WordVocab | None, loss_opts: dict, dataset):
        super().__init__()
        self.model = model
        self.vocab = vocab
        self.loss_opts = loss_opts
        # Outside the module tree: (text_encoder, tokenizer) for clip mode, and the training data set the vocabulary
        # was built from (the loader reads it, so it is built once).
        object.__setattr__(self, "clip", None)
        object.__setattr__(self, "dataset", dataset)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        c = self.model.config
        mentions = mention_batch(captions, c.max_mentions) if c.mention_tokens else None
        if c.text_encoder == "words":
            return self.model.encode_text(words=self.vocab.batch(captions, c.max_words).to(self.device),
                                          mentions=mentions)
        from ..sd15 import clip_ids

        encoder, tokenizer = self.clip
        with torch.no_grad():
            context = encoder(clip_ids(tokenizer, captions, self.device)).last_hidden_state  # (B, 77, 768)
        return self.model.encode_text(context=context.float(), mentions=mentions)

    def forward(self, batch: dict) -> tuple[Tensor, dict[str, float]]:
        batch = to_device(batch, self.device)
        text, pad = self.encode(batch["captions"])
        return layout_losses(self.model, text, pad, batch["labels"], batch.get("instances"), **self.loss_opts)


@register("layout")
class LayoutStage(Stage):
    """The text-to-layout model on the layout data; `build_model` also builds the training data set (the word
    vocabulary comes from its captions) and hands it to the module, where `build_dataloader` takes it."""

    def check_config(self, cfg) -> LayoutDataConfig:
        return LayoutDataConfig.from_table(cfg.data)

    def build_model(self, cfg, device: torch.device) -> LayoutTraining:
        data = self.check_config(cfg)
        if cfg.model.init:
            planner = load_layout_model(cfg.model.init)
            model, vocab = planner.model.float(), planner.vocab
            if model.config.mention_tokens != cfg.model.mention_tokens:
                # the file's architecture cannot change; a silent mismatch would train a different model than asked
                raise ValueError(
                    f"[model] init = {cfg.model.init} was trained with mention_tokens = "
                    f"{str(model.config.mention_tokens).lower()}; set model.mention_tokens="
                    f"{str(model.config.mention_tokens).lower()} or start without init")
            log.info("layout model initialised from %s", cfg.model.init)
        else:
            preset = cfg.model.preset if cfg.model.preset in PRESETS else None
            if preset is None:
                raise ValueError(f"[model] preset = {cfg.model.preset!r}: the layout stage expects one of "
                                 f"{sorted(PRESETS)}")
            config = dataclasses.replace(PRESETS[preset], mention_tokens=cfg.model.mention_tokens)
            model = TextToLayoutModel(config)
            vocab = None
        dataset = build_dataset(data)
        if model.config.text_encoder == "words" and vocab is None:
            vocab = WordVocab.build(dataset.captions(2000), model.config.vocab_size, extra=_BASE_WORDS)
        module = LayoutTraining(model, vocab, data.loss_weights, dataset).to(device)
        if model.config.text_encoder == "clip":
            from ..sd15 import load_sd15

            parts = load_sd15(cfg.sd15.path, device=device, dtype=torch.float32, text_encoder=True,
                              tokenizer_path=cfg.sd15.tokenizer)
            object.__setattr__(module, "clip", (parts.text_encoder, parts.tokenizer))
        n = sum(p.numel() for p in model.parameters())
        log.info("layout model: %s, %.2fM parameters, %s text encoder, mention tokens %s", cfg.model.preset,
                 n / 1e6, model.config.text_encoder, "on" if model.config.mention_tokens else "off")
        return module.train()

    def build_dataloader(self, cfg, model: nn.Module, rank: int, world_size: int) -> LayoutLoader:
        data = self.check_config(cfg)
        return LayoutLoader(unwrap(model).dataset, data.batch_size, seed=cfg.run.seed, rank=rank,
                            world_size=world_size)

    def loss(self, model: nn.Module, batch: dict, step: int) -> tuple[Tensor, dict[str, float]]:
        loss, metrics = model(batch)
        return loss, {f"layout/{k}": float(v) for k, v in metrics.items()}

    def count(self, batch: dict) -> tuple[int, int]:
        return len(batch["captions"]), 0

    def export(self, model: nn.Module, path, cfg) -> None:
        import torch.distributed as dist

        if dist.is_initialized() and dist.get_rank() != 0:
            return
        module = unwrap(model)
        save_layout_model(path, module.model, module.vocab, {"trained_stage": "layout"})
        log.info("exported layout model %s", path)
        data = self.check_config(cfg)
        if data.final_eval_scenes and data.source == "procedural" and module.model.config.text_encoder == "words":
            self._final_comparison(path, data.final_eval_scenes, data)

    def _final_comparison(self, path, scenes: int, data: LayoutDataConfig) -> None:
        """Score the rule-based planner and the exported model on the same held-out scenes (data seed + 1, never
        trained on), print both and write them to <export>.eval.json."""
        import json
        import sys
        from pathlib import Path

        from ..evaluation.layout import format_table, held_out_scenes, score_learned, score_rule_based

        seed = data.seed + 1
        pairs = held_out_scenes(scenes, seed, data.size)
        rows = {"rule_based": score_rule_based(pairs), "learned": score_learned(load_layout_model(path), pairs)}
        where = f"{scenes} held-out procedural scenes (seed {seed})"
        Path(str(path) + ".eval.json").write_text(json.dumps({"data": where, "scores": rows}, indent=2) + "\n")
        sys.stdout.write(f"layout evaluation on {where}, dataset-level mIoU (171 classes)\n{format_table(rows)}\n")
        log.info("held-out mIoU: learned %.4f vs rule-based %.4f", rows["learned"]["miou"], rows["rule_based"]["miou"])

    @torch.no_grad()
    def sample(self, model: nn.Module, step: int, writer, cfg) -> None:
        """Held-out mIoU on procedural scenes (seed + 1) and a strip of predicted layouts in TensorBoard."""
        data = self.check_config(cfg)
        module = unwrap(model)
        if module.model.config.text_encoder != "words":
            return
        n, size = data.val_scenes, data.size
        val = held_out_procedural(data.seed + 1, n, size)
        was = module.training
        module.eval()
        planner = LearnedPlanner(module.model, module.vocab)
        ev = LayoutEvaluator()
        shown = []
        for start in range(0, n, 64):
            chunk = val[start : start + 64]
            for sc, lay in zip(chunk, planner.layouts([s.caption for s in chunk]), strict=True):
                lay = lay.resized(size, size)
                ev.update(sc.caption, lay, sc.labels)
                if len(shown) < 8:
                    shown.append(np.concatenate([COCO_PANOPTIC_133.render(sc.labels), lay.render()], axis=1))
        module.train(was)
        scores = ev.scores()
        writer.log(step, {"val/miou": scores.miou, "val/count_accuracy": scores.count_accuracy,
                          "val/relation_accuracy": scores.relation_accuracy})
        if shown:
            grid = torch.from_numpy(np.stack(shown)).permute(0, 3, 1, 2).float() / 255.0
            writer.images("layout/ground_truth_vs_predicted", grid, step)
