{{/* Name of the chart, or nameOverride. */}}
{{- define "lamassu-aws-connector.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's objects: fullnameOverride, else <release>-<name> (or the release alone if it contains the name). */}}
{{- define "lamassu-aws-connector.fullname" -}}
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

{{- define "lamassu-aws-connector.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the pods: never change them on an installed release. */}}
{{- define "lamassu-aws-connector.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lamassu-aws-connector.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: connector
{{- end }}

{{- define "lamassu-aws-connector.labels" -}}
helm.sh/chart: {{ include "lamassu-aws-connector.chart" . }}
{{ include "lamassu-aws-connector.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lamassu
{{- end }}

{{- define "lamassu-aws-connector.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lamassu-aws-connector.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret the container's environment comes from: the existing one, the chart's own, or none (empty). */}}
{{- define "lamassu-aws-connector.secretName" -}}
{{- if and .Values.secret.existingSecret .Values.secret.env }}
{{- fail "set secret.existingSecret or secret.env, not both" }}
{{- end }}
{{- if .Values.secret.existingSecret }}
{{- .Values.secret.existingSecret }}
{{- else if .Values.secret.env }}
{{- include "lamassu-aws-connector.fullname" . }}
{{- end }}
{{- end }}

{{- define "lamassu-aws-connector.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* Where the amqpTls Secret is mounted. */}}
{{- define "lamassu-aws-connector.tlsDir" -}}
/etc/lamassu-aws-connector-tls
{{- end }}

{{/* The connector's config file: .Values.config plus amqp.tls from amqpTls. */}}
{{- define "lamassu-aws-connector.config" -}}
{{- $config := deepCopy (.Values.config | default dict) }}
{{- if .Values.amqpTls.secretName }}
{{- $amqp := get $config "amqp" | default dict }}
{{- $tls := dict "verify" .Values.amqpTls.verify }}
{{- $dir := include "lamassu-aws-connector.tlsDir" . }}
{{- with .Values.amqpTls.caKey }}{{ $_ := set $tls "ca_file" (printf "%s/%s" $dir .) }}{{ end }}
{{- with .Values.amqpTls.certKey }}{{ $_ := set $tls "cert_file" (printf "%s/%s" $dir .) }}{{ end }}
{{- with .Values.amqpTls.keyKey }}{{ $_ := set $tls "key_file" (printf "%s/%s" $dir .) }}{{ end }}
{{- $_ := set $amqp "tls" $tls }}
{{- $_ := set $config "amqp" $amqp }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/* config.http.port, the container's port (the connector's default 8080). */}}
{{- define "lamassu-aws-connector.httpPort" -}}
{{- $http := get (.Values.config | default dict) "http" | default dict }}
{{- get $http "port" | default 8080 | int }}
{{- end }}

{{/* Refuse combinations that cannot work. */}}
{{- define "lamassu-aws-connector.validate" -}}
{{- $sqs := get (.Values.config | default dict) "sqs" | default dict }}
{{- $commandQueue := get $sqs "command_queue" | default "lamassu-command" }}
{{- if and (hasSuffix ".fifo" $commandQueue) (or .Values.keda.enabled (gt (int .Values.replicaCount) 1)) }}
{{- fail "a FIFO command queue needs exactly one replica: set replicaCount 1 and keda.enabled false (RabbitMQ spreads one subject's events over all consumers)" }}
{{- end }}
{{- $shutdown := get (.Values.config | default dict) "shutdown" | default dict }}
{{- $grace := get $shutdown "grace_seconds" | default 25 | int }}
{{- if le (int .Values.terminationGracePeriodSeconds) $grace }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be above config.shutdown.grace_seconds (%d): SIGKILL would cut the drain" (int .Values.terminationGracePeriodSeconds) $grace) }}
{{- end }}
{{- if and .Values.keda.enabled (not (include "lamassu-aws-connector.secretName" .)) }}
{{- fail "keda.enabled reads LAMASSU_AMQP__URL from the connector's Secret: set secret.existingSecret or secret.env" }}
{{- end }}
{{- if and .Values.amqpTls.certKey (not .Values.amqpTls.keyKey) .Values.amqpTls.secretName }}
{{- fail "amqpTls.certKey needs amqpTls.keyKey (a client certificate without its key)" }}
{{- end }}
{{- if lt (int .Values.keda.minReplicaCount) 1 }}
{{- fail "keda.minReplicaCount must be at least 1: the reply flow (SQS to RabbitMQ) needs a running connector" }}
{{- end }}
{{- end }}

{{/* A probe from values, always on the container's http port. */}}
{{- define "lamassu-aws-connector.probe" -}}
{{- $probe := deepCopy . }}
{{- $httpGet := get $probe "httpGet" | default dict }}
{{- $_ := set $httpGet "port" "http" }}
{{- $_ := set $probe "httpGet" $httpGet }}
{{- toYaml $probe }}
{{- end }}
