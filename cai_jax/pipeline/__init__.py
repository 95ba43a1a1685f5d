"""The pipeline of stages, as a library (`stages`); the job that runs it is `jobs/pipeline.py`."""
