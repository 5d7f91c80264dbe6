"""Messages from the libraries under RLP that are not the user's business, silenced once at import (docs/quickstart.md).

* bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community": PEFT imports bitsandbytes whether or not
  4-bit was asked for, and on CPUs with AVX512-BF16 bitsandbytes logs that an optional fast 4-bit kernel (the
  `kernels` package) is missing. 4-bit loading works without it (a slower path), so the line is dropped.
* transformers 5.24's deprecation FutureWarnings for the `gradient_checkpointing*` names (renamed
  `activation_checkpointing*`) and for `past_key_values`: they fire inside TRL's and transformers' own calls on every
  run, whatever the user set; the code that calls them is TRL's (and rlp_trl's, to be moved before transformers v6).
"""

import logging
import warnings


class _DropMessage(logging.Filter):
    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage() if isinstance(record.msg, str) else ""
        return not any(f in message for f in self.fragments)


def install() -> None:
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropMessage("gemm_4bit_forward"))
    logging.getLogger("transformers.utils.generic").addFilter(_DropMessage("`past_key_values`/`cache_params` are deprecated"))
    for pattern in (r"`(is_)?gradient_checkpointing\w*` is deprecated", r"`past_key_values` is deprecated"):
        warnings.filterwarnings("ignore", message=pattern, category=FutureWarning)


install()
