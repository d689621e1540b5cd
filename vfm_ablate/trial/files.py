"""Names of the files in a trial's output folder (read back by diagnose, tracking and reports). No imports."""

METRICS_FILE = "metrics.json"
LORA_TARGETS_FILE = "lora_targets.json"
CONFIG_FILE = "config.yaml"  # trial spec + resolved backbone entry + dataset entries
CHECKPOINT_FILE = "trainable_checkpoint.pt"  # head + LoRA (all weights for `full`)
STATE_FILE = "train_state.pt"  # full training state inside a resumable checkpoint folder
OVERLAYS_DIR = "overlays"
