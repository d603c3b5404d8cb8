"""The reconcile loop: the imperative shell around the pure planner (Flux source-controller).

    reconciler  ``Reconciler``: one pass at a time, the wake/sleep loop, what others read
    steps       the pass as ordered steps over a scratch ``Pass``:
                fetch_source -> evaluate_approval -> load_target -> plan_rollouts -> write_changes
    tip         release rows for a refused or invalid newest tip
    meta        the typed codec of the loop's store meta keys

The conditions (``Ready``, ``Reconciling``, ``Stalled``) are summarised by the pure
``reconciler.plan.conditions.summarize`` and written whatever happens, when they changed.
This package's ``__init__`` imports nothing, so that ``meta`` stays light for its readers.
"""
