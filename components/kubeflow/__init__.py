"""Kubeflow-runtime variants of the TFX components and executors (no
Resolver nodes on open-source KFP v2): they run inside task pods."""
