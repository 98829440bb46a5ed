"""`python -m trainer ...` is `cllm4rec train ...` (the entry point the DeepSpeed launcher runs)."""
import sys

from trainer.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
