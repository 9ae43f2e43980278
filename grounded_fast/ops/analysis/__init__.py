"""The analysis op family: all-pairs agreement / divergence between models' predictions
(``grounded_fast::pairwise_agreement``) and all-pairs attention distances
(``grounded_fast::attention_pair_sums``). ``op``: the ops and their public functions; ``checks``:
what they accept. The chunk-streaming API is :mod:`grounded_fast.analysis`."""
from .checks import ATTENTION_METRICS, MAX_ABS_LOGIT, check_attention_rows, check_logits
from .op import attention_pair_sums, pairwise_agreement_sums

__all__ = ["pairwise_agreement_sums", "attention_pair_sums", "check_logits", "check_attention_rows",
           "ATTENTION_METRICS", "MAX_ABS_LOGIT"]
