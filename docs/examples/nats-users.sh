# An external NATS in operator mode (JWT): one account for the deployment and one user per
# service kind, with the permissions `loraroute up` gives its own server (docs/operations.md,
# "NATS security"; subject prefix `loraroute`). The classifier answers through response
# permissions, for up to 610 s: the longest request deadline (jobs.line_timeout_s) plus 10 s.
# Classifiers and dispatchers read and watch the live config (KV bucket loraroute_config) only;
# the admin user, who runs `loraroute config push`, needs `$KV.loraroute_config.>` and the
# JetStream API besides.
nsc add account --name loraroute
nsc edit account --name loraroute --js-mem-storage -1 --js-disk-storage -1 \
  --js-streams -1 --js-consumer -1
nsc add user --account loraroute --name ingress \
  --allow-pub 'loraroute.classify,loraroute.cancel.*,loraroute.ping.>,loraroute.jobs.control,$JS.API.>,$KV.loraroute_batches.>,$O.loraroute_files.>,$JS.FC.>' \
  --allow-sub '_INBOX.loraroute.ingress.>'
nsc add user --account loraroute --name classifier \
  --allow-pub 'loraroute.dispatch.*,$JS.API.INFO,$JS.API.STREAM.INFO.KV_loraroute_config,$JS.API.STREAM.CREATE.KV_loraroute_config,$JS.API.STREAM.MSG.GET.KV_loraroute_config,$JS.API.DIRECT.GET.KV_loraroute_config,$JS.API.DIRECT.GET.KV_loraroute_config.>,$JS.API.CONSUMER.CREATE.KV_loraroute_config,$JS.API.CONSUMER.CREATE.KV_loraroute_config.>,$JS.API.CONSUMER.INFO.KV_loraroute_config.>,$JS.API.CONSUMER.DELETE.KV_loraroute_config.>,$JS.FC.KV_loraroute_config.>' \
  --allow-sub '_INBOX.loraroute.classifier.>,loraroute.classify,loraroute.classify.jobs,loraroute.cancel.*,loraroute.bounce.>' \
  --allow-pub-response 1000 --response-ttl 610s
nsc add user --account loraroute --name dispatcher \
  --allow-pub '_INBOX.loraroute.ingress.>,_INBOX.loraroute.jobs.>,$JS.API.INFO,$JS.API.STREAM.INFO.KV_loraroute_config,$JS.API.STREAM.CREATE.KV_loraroute_config,$JS.API.STREAM.MSG.GET.KV_loraroute_config,$JS.API.DIRECT.GET.KV_loraroute_config,$JS.API.DIRECT.GET.KV_loraroute_config.>,$JS.API.CONSUMER.CREATE.KV_loraroute_config,$JS.API.CONSUMER.CREATE.KV_loraroute_config.>,$JS.API.CONSUMER.INFO.KV_loraroute_config.>,$JS.API.CONSUMER.DELETE.KV_loraroute_config.>,$JS.FC.KV_loraroute_config.>' \
  --allow-sub '_INBOX.loraroute.dispatcher.>,loraroute.dispatch.*,loraroute.ping.dispatch.*,loraroute.cancel.*'
nsc add user --account loraroute --name jobs \
  --allow-pub 'loraroute.classify.jobs,loraroute.jobs.>,$JS.API.>,$KV.loraroute_batches.>,$O.loraroute_files.>,$JS.ACK.>,$JS.FC.>' \
  --allow-sub '_INBOX.loraroute.jobs.>,$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.loraroute_job_lines.job-lines'
# Each service gets its own file: LORAROUTE_NATS_CREDS=/path/to/<kind>.creds
for kind in ingress classifier dispatcher jobs; do
  nsc generate creds --account loraroute --name "$kind" > "$kind.creds"
done
