{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "credsync.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, suffixed with the chart name unless it already contains it. */}}
{{- define "credsync.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "credsync.selectorLabels" -}}
app.kubernetes.io/name: {{ include "credsync.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "credsync.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "credsync.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "credsync.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "credsync.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "credsync.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* "true" when credsync runs with --leader-election: 2+ replicas, or forced on. */}}
{{- define "credsync.leaderElection" -}}
{{- if or (gt (int .Values.replicaCount) 1) .Values.leaderElection.enabled }}true{{- end }}
{{- end }}

{{/* The Secret and key holding the /sync token, as "name/key"; empty when /sync is open. */}}
{{- define "credsync.syncTokenSecret" -}}
{{- if .Values.syncToken.existingSecret }}
{{- printf "%s/%s" .Values.syncToken.existingSecret .Values.syncToken.existingSecretKey }}
{{- else if .Values.syncToken.generate }}
{{- printf "%s-sync-token/token" (include "credsync.fullname" .) }}
{{- end }}
{{- end }}

{{/* Namespaces credsync writes to: config.namespaceInclude, else rbac.namespaces. */}}
{{- define "credsync.namespaceInclude" -}}
{{- if .Values.config.namespaceInclude }}
{{- join "," .Values.config.namespaceInclude }}
{{- else if .Values.rbac.namespaces }}
{{- join "," .Values.rbac.namespaces }}
{{- end }}
{{- end }}

{{/* Values the schema cannot check: fail the render with a clear message. */}}
{{- define "credsync.validate" -}}
{{- if and .Values.rbac.namespaces .Values.config.namespaceInclude }}
{{- range .Values.config.namespaceInclude }}
{{- if not (has . $.Values.rbac.namespaces) }}
{{- fail (printf "config.namespaceInclude names %q, which rbac.namespaces does not grant" .) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and .Values.snapshot.sshKeySecret.name (not .Values.snapshot.remote) }}
{{- fail "snapshot.sshKeySecret needs snapshot.remote" }}
{{- end }}
{{- if and .Values.snapshot.tokenSecret.name (not .Values.snapshot.remote) }}
{{- fail "snapshot.tokenSecret needs snapshot.remote" }}
{{- end }}
{{- end }}

{{/* The container's environment: every setting from values as a CREDSYNC_* variable. */}}
{{- define "credsync.env" -}}
{{- $c := .Values.config -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: CREDSYNC_LISTEN
  value: "0.0.0.0:8080"
- name: CREDSYNC_TABLE
  value: {{ $c.table | quote }}
{{- if ne (join "," $c.sources) "credstash" }}
- name: CREDSYNC_SOURCE
  value: {{ join "," $c.sources | quote }}
{{- end }}
{{- if has "secretsmanager" $c.sources }}
- name: CREDSYNC_SM_NAMES
  value: {{ $c.secretsManager.names | quote }}
{{- with $c.secretsManager.prefix }}
- name: CREDSYNC_SM_PREFIX
  value: {{ . | quote }}
{{- end }}
{{- if $c.secretsManager.tags }}
- name: CREDSYNC_SM_TAG
  value: {{ $pairs := list }}{{ range $k, $v := $c.secretsManager.tags }}{{ $pairs = append $pairs (printf "%s=%s" $k $v) }}{{ end }}{{ join "," $pairs | quote }}
{{- end }}
{{- end }}
{{- with $c.eventsQueues }}
- name: CREDSYNC_EVENTS_QUEUE
  value: {{ join "," . | quote }}
{{- end }}
{{- with $c.region }}
- name: CREDSYNC_REGION
  value: {{ . | quote }}
{{- end }}
{{- if $c.context }}
- name: CREDSYNC_CONTEXT
  value: {{ $pairs := list }}{{ range $k, $v := $c.context }}{{ $pairs = append $pairs (printf "%s=%s" $k $v) }}{{ end }}{{ join "," $pairs | quote }}
{{- end }}
- name: CREDSYNC_CLUSTER_NAME
  value: {{ $c.clusterName | quote }}
- name: CREDSYNC_NAMESPACE_EXCLUDE
  value: {{ $c.namespaceExclude | quote }}
{{- with include "credsync.namespaceInclude" . }}
- name: CREDSYNC_NAMESPACE_INCLUDE
  value: {{ . | quote }}
{{- end }}
- name: CREDSYNC_KMS_CONCURRENCY
  value: {{ $c.kmsConcurrency | int | quote }}
- name: CREDSYNC_SCAN_SEGMENTS
  value: {{ $c.scanSegments | int | quote }}
{{- if not $c.prune }}
- name: CREDSYNC_NO_PRUNE
  value: "true"
{{- end }}
{{- if $c.keepEmpty }}
- name: CREDSYNC_KEEP_EMPTY
  value: "true"
{{- end }}
{{- if ne $c.keyMapping "credsync" }}
- name: CREDSYNC_KEY_MAPPING
  value: {{ $c.keyMapping | quote }}
{{- end }}
{{- if $c.adoptKubestashV2 }}
- name: CREDSYNC_ADOPT_KUBESTASH_V2
  value: "true"
{{- end }}
- name: CREDSYNC_LOG_FORMAT
  value: {{ $c.logFormat | quote }}
{{- if $c.verbose }}
- name: CREDSYNC_VERBOSE
  value: "true"
{{- end }}
{{- with $c.interval }}
- name: CREDSYNC_INTERVAL
  value: {{ . | quote }}
{{- end }}
{{- with $c.schedule }}
- name: CREDSYNC_SCHEDULE
  value: {{ . | quote }}
{{- end }}
{{- if not $c.stream.enabled }}
- name: CREDSYNC_NO_STREAM
  value: "true"
{{- end }}
{{- with $c.stream.arn }}
- name: CREDSYNC_STREAM_ARN
  value: {{ . | quote }}
{{- end }}
- name: CREDSYNC_DEBOUNCE
  value: {{ $c.stream.debounce | quote }}
- name: CREDSYNC_STREAM_IDLE_POLL
  value: {{ $c.stream.idlePoll | quote }}
- name: CREDSYNC_RECONCILE_TIMEOUT
  value: {{ $c.reconcileTimeout | quote }}
- name: CREDSYNC_FAILURE_LIMIT
  value: {{ $c.failureLimit | int | quote }}
- name: CREDSYNC_SYNC_RATE_LIMIT
  value: {{ $c.syncRateLimit | quote }}
{{- if not $c.driftRepair }}
- name: CREDSYNC_NO_DRIFT_REPAIR
  value: "true"
{{- end }}
{{- if $c.dryRun }}
- name: CREDSYNC_DRY_RUN
  value: "true"
{{- end }}
{{- if .Values.rollouts.enabled }}
- name: CREDSYNC_ROLLOUTS
  value: "true"
- name: CREDSYNC_ROLLOUT_TIMEOUT
  value: {{ .Values.rollouts.timeout | quote }}
- name: CREDSYNC_ROLLOUT_REVERT
  value: {{ .Values.rollouts.revert | toString | quote }}
{{- end }}
{{- if .Values.selfService.enabled }}
- name: CREDSYNC_SELF_SERVICE
  value: "true"
- name: CREDSYNC_KEY_ID
  value: {{ .Values.selfService.keyId | quote }}
- name: CREDSYNC_SELF_SERVICE_MAX_BYTES
  value: {{ .Values.selfService.maxValueBytes | int | quote }}
{{- if not .Values.selfService.namespaces }}
{{- fail "selfService.namespaces is required with selfService.enabled: the namespaces this cluster is the authority for" }}
{{- end }}
- name: CREDSYNC_SELF_SERVICE_NAMESPACES
  value: {{ join "," .Values.selfService.namespaces | quote }}
{{- end }}
- name: CREDSYNC_GRACE
  value: {{ $c.grace | quote }}
- name: CREDSYNC_REQUEST_TIMEOUT
  value: {{ $c.requestTimeout | quote }}
- name: CREDSYNC_HTTP_HEADER_TIMEOUT
  value: {{ $c.httpHeaderTimeout | quote }}
- name: CREDSYNC_MAX_CONNECTIONS
  value: {{ $c.maxConnections | int | quote }}
{{- if include "credsync.leaderElection" . }}
- name: CREDSYNC_LEADER_ELECTION
  value: "true"
- name: CREDSYNC_LEASE_NAME
  value: {{ include "credsync.fullname" . | quote }}
- name: CREDSYNC_LEASE_DURATION
  value: {{ .Values.leaderElection.leaseDuration | quote }}
{{- end }}
{{- if include "credsync.syncTokenSecret" . }}
- name: CREDSYNC_SYNC_TOKEN_FILE
  value: /etc/credsync/sync-token/token
{{- else if .Values.syncToken.insecureNoAuth }}
- name: CREDSYNC_INSECURE_NO_AUTH
  value: "true"
{{- end }}
{{- if .Values.snapshot.enabled }}
- name: HOME
  value: /home/nonroot
- name: CREDSYNC_SNAPSHOT_REPO
  value: /var/lib/credsync/snapshots
- name: CREDSYNC_AGE_RECIPIENT
  value: {{ join "," .Values.snapshot.ageRecipients | quote }}
{{- with .Values.snapshot.remote }}
- name: CREDSYNC_SNAPSHOT_REMOTE
  value: {{ . | quote }}
- name: CREDSYNC_REQUEST_POLL_INTERVAL
  value: {{ $.Values.snapshot.requestPollInterval | quote }}
{{- end }}
{{- if .Values.snapshot.sshKeySecret.name }}
- name: CREDSYNC_SNAPSHOT_SSH_KEY
  value: /etc/credsync/snapshot-ssh/key
{{- end }}
{{- if .Values.snapshot.tokenSecret.name }}
- name: CREDSYNC_SNAPSHOT_TOKEN_FILE
  value: /etc/credsync/snapshot-token/token
{{- end }}
{{- if .Values.snapshot.ageIdentitySecret.name }}
- name: CREDSYNC_AGE_IDENTITY
  value: /etc/credsync/age/identity
{{- end }}
{{- if .Values.snapshot.signingKeySecret.name }}
- name: CREDSYNC_SNAPSHOT_SIGNING_KEY
  value: /etc/credsync/signing/key
{{- end }}
{{- if .Values.snapshot.trustedKeys }}
- name: CREDSYNC_SNAPSHOT_TRUSTED_KEY
  value: /etc/credsync/trusted/keys
{{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
