"""What a user runs on a home: export, promote, rollback, lineage, doctor,
report. Above pipeline/ and components/, beside kubeflow/."""
