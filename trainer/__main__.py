"""`python -m trainer ...` is `cllm4rec train ...` (the entry point the DeepSpeed launcher runs)."""
import logging
import os
import sys

from trainer.cli import main
from trainer.distributed import launched

if __name__ == "__main__":
    code = main(["train", *sys.argv[1:]])
    if launched():
        # Under a launcher every output is written and the process group destroyed by now. Skip the
        # interpreter's teardown, where a C++ communication thread's destructor intermittently aborts a
        # finished run ("terminate called without an active exception", exit code 250 at the launcher).
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
