"""avmem inside other evaluation tools.

- :mod:`avmem.integrations.lmms_eval`: avmem as an lmms-eval model (``lmms-eval --model avmem ...``), registered
  through the ``lmms_eval.models`` entry point. Importing it does not import lmms-eval.
"""
