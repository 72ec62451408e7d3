"""Helper nodes the end-to-end tests install into the temporary ComfyUI (copied to custom_nodes/ as one file).

* KosmosGTestUNetProbe (MODEL -> MODEL): clones the model and installs a U-Net function wrapper
  (`ModelPatcher.set_model_unet_function_wrapper`, ComfyUI's public hook around every `apply_model` call) that appends
  one JSON line per U-Net call to `log_path`: the batch of the noisy input, the shape of the cross-attention
  context and, for SDXL, of the ADM input `y` (pooled 1280 + 6 x 256 size embeddings) with each row's pooled sum and
  the first row's size part. Two steps of CFG with positive and negative batched together give 2 lines, each with batch 2; if they were
  run separately there would be 4 lines with batch 1. The model itself is not changed.
* KosmosGTestConditioningInfo (output node): reports the shape, dtype and sum of each CONDITIONING entry in the
  prompt's history, its dict's keys, the shape and sum of a `pooled_output` and the values of SDXL's size keys, so
  conditioning can be checked without paying for a U-Net run.
* KosmosGTestImage: an IMAGE of any size / channel count (a 4-channel RGBA or 1-channel greyscale IMAGE, a 1x1
  image), which no stock node makes, to try the pack's input checks.
* KosmosGTestTinyUNet: a MODEL that ComfyUI treats as SDXL, SD2 or SD1.5 (its own model classes and unet_config keys) at a
  tiny width with uninitialised weights, to see what a user who wires KOSMOS-G into them is told;
  KosmosGTestLatentSink is an output node for its KSampler.
"""

import json

import torch


class KosmosGTestUNetProbe:
    CATEGORY = "kosmos_g_tests"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "probe"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "log_path": ("STRING", {"default": ""})}}

    def probe(self, model, log_path):
        def wrapper(apply_model, args):
            context = args["c"].get("c_crossattn")
            record = {"x": list(args["input"].shape), "context": list(context.shape) if context is not None else None}
            y = args["c"].get("y")
            if y is not None:
                record["y"] = list(y.shape)
                if y.shape[-1] == 2816:  # SDXL: [pooled 1280 | 6 x 256 size embeddings]
                    record["y_pooled_sums"] = [float(row) for row in y[:, :1280].double().sum(dim=1)]
                    record["y_sizes"] = [round(float(v), 5) for v in y[0, 1280:]]
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            return apply_model(args["input"], args["timestep"], **args["c"])

        patched = model.clone()
        patched.set_model_unet_function_wrapper(wrapper)
        return (patched,)


class KosmosGTestImage:
    CATEGORY = "kosmos_g_tests"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"width": ("INT", {"default": 64, "min": 1}), "height": ("INT", {"default": 64, "min": 1}),
                             "channels": ("INT", {"default": 3, "min": 1, "max": 8}),
                             "batch": ("INT", {"default": 1, "min": 1})}}

    def make(self, width, height, channels, batch):
        generator = torch.Generator().manual_seed(width * 1000 + height * 10 + channels)
        return (torch.rand(batch, height, width, channels, generator=generator),)


class KosmosGTestConditioningInfo:
    CATEGORY = "kosmos_g_tests"
    RETURN_TYPES = ()
    FUNCTION = "report"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("CONDITIONING",)}, "optional": {"b": ("CONDITIONING",)}}

    def report(self, a, b=None):
        sizes = ("width", "height", "crop_w", "crop_h", "target_width", "target_height")

        def describe(conditioning):
            out = []
            for t, d in conditioning:
                entry = {"shape": list(t.shape), "dtype": str(t.dtype), "sum": float(t.double().sum()),
                         "keys": sorted(d), "sizes": {k: d[k] for k in sizes if k in d}}
                if d.get("pooled_output") is not None:
                    entry["pooled_shape"] = list(d["pooled_output"].shape)
                    entry["pooled_sum"] = float(d["pooled_output"].double().sum())
                    entry["pooled_dtype"] = str(d["pooled_output"].dtype)
                out.append(entry)
            return out

        return {"ui": {"a": describe(a), "b": describe(b) if b is not None else []}}


class KosmosGTestLatentSink:
    """An output node taking a LATENT, so a KSampler runs without a VAE."""

    CATEGORY = "kosmos_g_tests"
    RETURN_TYPES = ()
    FUNCTION = "sink"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",)}}

    def sink(self, samples):
        return {"ui": {"shape": [list(samples["samples"].shape)]}}


class KosmosGTestTinyUNet:
    CATEGORY = "kosmos_g_tests"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"family": (["SDXL", "SD2", "SD15"],)}}

    def make(self, family):
        import comfy.model_management
        import comfy.model_patcher
        import comfy.supported_models

        # The family's real unet_config keys at two levels of 64 channels: SDXL has 2048-d cross-attention and an
        # ADM input of 2816 (pooled text 1280 + 6 x 256); SD2 has 1024-d cross-attention and no ADM; SD1.5 768-d and
        # no ADM.
        unet_config = {
            "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 64,
            "num_res_blocks": [1, 1], "channel_mult": [1, 2], "transformer_depth": [0, 1], "transformer_depth_middle": 1,
            "transformer_depth_output": [0, 0, 1, 1], "use_spatial_transformer": True, "legacy": False,
            "use_linear_in_transformer": True, "use_temporal_attention": False, "use_temporal_resblock": False,
        }
        if family == "SDXL":
            unet_config.update(context_dim=2048, adm_in_channels=2816, num_classes="sequential")
            model_config = comfy.supported_models.SDXL(unet_config)
        elif family == "SD2":
            unet_config.update(context_dim=1024, adm_in_channels=None)
            model_config = comfy.supported_models.SD20(unet_config)
        else:
            unet_config.update(context_dim=768, adm_in_channels=None)
            model_config = comfy.supported_models.SD15(unet_config)
        model = model_config.get_model({})
        return (comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                                 offload_device=comfy.model_management.unet_offload_device()),)


NODE_CLASS_MAPPINGS = {"KosmosGTestUNetProbe": KosmosGTestUNetProbe, "KosmosGTestImage": KosmosGTestImage,
                       "KosmosGTestConditioningInfo": KosmosGTestConditioningInfo,
                       "KosmosGTestTinyUNet": KosmosGTestTinyUNet, "KosmosGTestLatentSink": KosmosGTestLatentSink}
