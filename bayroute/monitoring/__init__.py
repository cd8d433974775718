"""Monitoring: what on-call needs from the data-capture records, the model's baseline and human labels.

- :mod:`records` reads capture records of any SageMaker endpoint (bayroute's own, or files ``aws s3 sync``
  downloaded) into observations: confidence, predicted class, model version, input statistics;
- :mod:`stats` turns them into per-window statistics and drift (population stability index);
- :mod:`state` keeps the monitor's watermark in the capture bucket, so each record is counted once;
- :mod:`publish` sends the statistics to CloudWatch (EMF on AWS, ``PutMetricData`` elsewhere);
- :mod:`monitor` is one pass of the scheduled monitor: new records → metrics → watermark;
- :mod:`alarms` loads the alarm definitions (``infra/alarms.json``) and evaluates alarms as CloudWatch does,
  publishing CloudWatch's notification message on each state change (moto evaluates nothing);
- :mod:`feedback` joins human labels to captured inferences: live accuracy, precision, threshold advice;
- :mod:`report` renders the report (PNG and a self-contained HTML page).
"""
