"""Tiny random scorer models and a tiny generator (toy base model + tiny KOSMOS-G) built in tmp folders."""

import json
import warnings

import pytest
import torch

from training.tiny_assets import write_clip_tokenizer


@pytest.fixture(scope="session")
def tiny_dino(tmp_path_factory):
    from transformers import ViTConfig, ViTModel

    path = tmp_path_factory.mktemp("dino")
    torch.manual_seed(0)
    cfg = ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                    patch_size=16)
    ViTModel(cfg, add_pooling_layer=False).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel

    path = tmp_path_factory.mktemp("clip")
    words = "a in the jungle snow dog cat backpack teapot vase on beach red cube shaped".split()
    tok = write_clip_tokenizer(words, path)
    vocab = len(json.loads((tok / "vocab.json").read_text()))
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=vocab, max_position_embeddings=77, bos_token_id=vocab - 2, eos_token_id=vocab - 1,
                         pad_token_id=vocab - 1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=16),
        projection_dim=16,
    )
    CLIPModel(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_generator(tmp_path_factory):
    """(KOSMOS-G pack checkpoint, SD1.5-layout folder): a random tiny KOSMOS-G and the toy base model (test size)."""
    from training.toy_world.base_model import BaseModelConfig, train_base_model
    from training.toy_world.run import _init_checkpoint
    from training.toy_world.shards import write_kosmos_tokenizer

    root = tmp_path_factory.mktemp("generator")
    base = train_base_model(root / "base", BaseModelConfig.test(), seed=0)
    ckpt = _init_checkpoint(root / "kosmos_g.safetensors", write_kosmos_tokenizer(root / "tok"), base, seed=0)
    return ckpt, base


@pytest.fixture()
def save_torchscript():
    """save(module, path): a TorchScript file, the only format the FID Inception comes in; torch's deprecation of
    torch.jit is expected here and silenced for this call only."""

    def save(module: torch.nn.Module, path) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.(script|save)` is deprecated",
                                    category=DeprecationWarning)
            torch.jit.script(module).save(str(path))

    return save
