"""The model zoo: ``available()`` lists the models, ``build(name, preset="tiny", **overrides)`` builds
one, ``save(model, dir)`` / ``load(dir)`` round-trip config and weights.

- ``grounding-seq2seq``: the seq2seq grounding decoders of "Grounded and Well-rounded"
  (:mod:`.grounding_seq2seq`);
- ``flava``: a FLAVA-style multitask model, MLM / MIM / MMM / ITM / contrastive (:mod:`.flava`);
- ``groundedbert``: frozen text and vision encoders, grounding MLP, partial-OT alignment
  (:mod:`.groundedbert`);
- :mod:`.encoders`: the shipped pretrained encoders (MiniLM text, EfficientNet-Lite0 patches).
Presets: ``tiny`` (trains in CPU minutes), ``small``, ``paper`` (the original sizes).
"""
from .encoders import TextEncoder, VisionEncoder
from .flava import FlavaConfig, FlavaModel, KMeansCodebook, LossScheduler, blimp_accuracy, pseudo_perplexity
from .grounding_seq2seq import GroundingSeq2Seq, GroundingSeq2SeqConfig
from .groundedbert import GroundedBERT, GroundedBERTConfig
from .registry import available, build, load, register, save

register("grounding-seq2seq", GroundingSeq2SeqConfig, GroundingSeq2Seq)
register("flava", FlavaConfig, FlavaModel)
register("groundedbert", GroundedBERTConfig, GroundedBERT)

__all__ = ["available", "build", "save", "load", "register", "GroundingSeq2Seq", "GroundingSeq2SeqConfig",
           "FlavaModel", "FlavaConfig", "KMeansCodebook", "LossScheduler", "pseudo_perplexity", "blimp_accuracy",
           "GroundedBERT", "GroundedBERTConfig", "TextEncoder", "VisionEncoder"]
