"""Accuracy evaluation: the protocol code apart from the model code.

* :mod:`~veilface.eval.protocols`: pair files (generic, LFW ``pairs.txt``, CFP ``pairs_F*.txt``);
* :mod:`~veilface.eval.verification`, :mod:`~veilface.eval.identification`,
  :mod:`~veilface.eval.calibration`: metrics on scores (pure numpy);
* :mod:`~veilface.eval.occlusion`: the seeded occlusion generator (also a training augmentation);
* :mod:`~veilface.eval.variants`, :mod:`~veilface.eval.extract`: embeddings through the production face
  path, in worker processes, in memory only;
* :mod:`~veilface.eval.encrypted`: the same scores computed under CKKS encryption;
* :mod:`~veilface.eval.pairs` (``veilface eval pairs``) and :mod:`~veilface.eval.run` (``make eval``),
  with :mod:`~veilface.eval.benchmarks`, :mod:`~veilface.eval.scoring`, :mod:`~veilface.eval.plots`
  and :mod:`~veilface.eval.report`.
"""
