# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv and install
# the pinned requirements first (once; again only when requirements.txt changes).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

# The demo's tiny model and its fine-tuned adapter (the real model lives in model/deepseek_ai/).
TINY      := model/tiny_r1
TINY_LORA := model/tiny_r1_lora

# Tests: two pytest workers, one thread each (two threads per worker would only contend).
OMP_NUM_THREADS ?= 1
export OMP_NUM_THREADS
# Tests: each stage script run's glibc allocator keeps freed memory for the next training step (the test
# harness calls mallopt; tests/warm_python.py). By default glibc maps every block over 32 MiB (the stand-in's
# 151,936-column logits) on its own, gives it back at free, and the next step faults it in again: the 14 steps
# of the suite's training run took 8.9 s so, 4.8 s with the setting (bench/malloc_steps.py, 2026-12-06, 2-core
# x86-64 CPU; peak RSS 1.2 -> 1.3-1.6 GB). The tests that measure a run's memory run with glibc's defaults.
TEST_MALLOC := R1_SFT_TEST_MALLOC=keep
# The demo runs one process at a time: its training and evaluation use both cores of a 2-core CPU
# (a training step through the 151,936-row output layer: 4.8 s on 2 threads, 7 s on 1).
DEMO_THREADS ?= 2

.PHONY: install browser demo test test-without-model data bench

install: $(STAMP)

# pip does not compile the libraries' 20,000 modules ahead (most are never imported): Python compiles those
# a run imports when it first imports them, and keeps them (make lets it write them even where the
# environment says PYTHONDONTWRITEBYTECODE, which would make every new process compile its imports again).
unexport PYTHONDONTWRITEBYTECODE

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile -r requirements.txt
	@touch $(STAMP)

# The whole pipeline on the tiny offline model and the sample data (minutes on a CPU).
demo: install data $(TINY)/config.json
	@echo "== 2. model: try the tiny offline R1 stand-in"
	$(PY) scripts/test_model.py --model_path $(TINY) --max_new_tokens 256
	@echo "== 3. training: QLoRA SFT of the tiny model on the sample data"
	OMP_NUM_THREADS=$(DEMO_THREADS) $(PY) scripts/train_stf_r1_train_val.py --model_path $(TINY) --output_dir $(TINY_LORA) \
		--overwrite_output_dir --max_length 512 --max_steps 40 --learning_rate 2e-2 \
		--per_device_train_batch_size 4 --gradient_accumulation_steps 1 --eval_steps 20 --save_steps 20 \
		--logging_steps 10 --no_gradient_checkpointing \
		--lora_target_modules q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,lm_head
	@echo "== 4. evaluation: base vs fine-tuned on the held-out test split (dataset/sft_r1_test.jsonl)"
	@echo "   (R1's sampling protocol, temperature 0.6 / top_p 0.95, seed 42: every test question x 3 samples)"
	OMP_NUM_THREADS=$(DEMO_THREADS) $(PY) scripts/evaluate_model.py --base_model $(TINY) --adapter $(TINY_LORA)/best_model \
		--num_samples 0 --n_samples 3 --batch_size 13 --max_new_tokens 384 --run_name demo
	@echo "== 5. chat: one scripted turn with the fine-tuned model"
	echo "高血压患者平时饮食要注意什么？" | $(PY) scripts/chat_with_model.py --model $(TINY_LORA)/best_model --max_new_tokens 512

# Built offline (no hub access needed); rebuilt when missing or when its recipe or corpus changes.
# The files of r1_sft.model.tiny_model.DEFAULT_CORPUS_GLOBS (make cannot ask Python before the venv exists).
TINY_CORPUS := modelscope_r1_data/r1_data_example.jsonl $(wildcard r1_generated/00[1-3].jsonl)
$(TINY)/config.json: r1_sft/model/tiny_model.py r1_sft/model/r1_tokenizer.py $(TINY_CORPUS) | install
	@echo "== 2. model: build the tiny offline R1 stand-in"
	$(PY) download_model/download_model.py --tiny --local_dir $(TINY)

data: install
	@echo "== 1. data: both sources -> SFT files -> train/val/test splits"
	$(PY) data/generated_converted_data.py
	$(PY) data/generated_stf_r1_data.py
	$(PY) data/split_stf_r1_data.py
	$(PY) data/generated_teacher_filtered.py
	$(PY) data/build_sft_dataset.py
	$(PY) data/split_sft_train.py

# The browser tests: Playwright (pinned in requirements-browser.txt) driving Debian's chromium, installed
# with apt-get when missing (as root; a CJK font too, for the page and chart screenshots). Once installed
# nothing is downloaded again. Without root or apt-get the browser tests skip and say why.
BROWSER_STAMP := $(VENV)/.browser-stamp

browser: $(BROWSER_STAMP)
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "== installing Debian's chromium for the browser tests (apt-get)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-wqy-microhei; \
		else echo "chromium is missing and this user cannot install it (needs root and apt-get): browser tests will skip"; fi; }

$(BROWSER_STAMP): requirements-browser.txt $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile -r requirements-browser.txt
	@touch $(BROWSER_STAMP)


# The suite in two parts: while one core builds the stand-in (the real command, as `make demo` does; then
# reused), the other installs the browser and runs the tests that need no model; then both cores run the
# tests that need it. Each pytest worker runs the stage scripts in forks of one Python that has imported
# the libraries (tests/warm_python.py); R1_SFT_TEST_FRESH_PYTHON=1 starts a new interpreter for every run.
test: install
	@$(MAKE) --no-print-directory -j2 --output-sync=target test-without-model $(TINY)/config.json
	$(TEST_MALLOC) R1_SFT_TINY_MODEL=$(CURDIR)/$(TINY) $(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15 --stand-in only

test-without-model: install browser
	$(TEST_MALLOC) $(PY) -m pytest -q --durations=5 --stand-in none

bench: install data $(TINY)/config.json
	$(PY) bench/data_pipeline.py
	$(PY) bench/train_throughput.py
	$(PY) bench/eval_throughput.py
	$(PY) bench/tokenizer_load.py
	$(PY) bench/malloc_steps.py
