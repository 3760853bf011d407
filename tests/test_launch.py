"""The launch scripts: a real two-worker run with launch/local.sh, and what ssh.sh, gce.sh,
vertex.sh and k8s.sh would run (their --dry-run), since this machine has no SSH hosts, cloud,
cluster or Docker daemon; and what the Dockerfile builds."""
import configparser
import glob
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import zipfile

import pytest
import yaml
from google.protobuf import json_format

import helpers

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
SCRIPTS = ['launch/local.sh', 'launch/ssh.sh', 'launch/gce.sh', 'launch/vertex.sh', 'launch/k8s.sh']
# The smallest real run: mock tfds data does not cross processes, synthetic data does.
TINY_RUN = [
    '--dataset=synthetic', '--weights=none', '--image_size=32', '--batch_size=8', '--epochs=1',
    '--steps_per_epoch=2', '--eval_steps=1', '--recalibrate_batchnorm=2'
]

launch = helpers.run_script


def tf_configs(dry_run_output):
  """The TF_CONFIG of every command line in a dry run, parsed the way a shell would."""
  configs = []
  for line in dry_run_output.splitlines():
    if line.startswith('TF_CONFIG='):
      assignment = shlex.split(line)[0]
      configs.append(json.loads(assignment[len('TF_CONFIG='):]))
  return configs


def assert_one_cluster_two_tasks(configs, cluster=None):
  assert len(configs) == 2
  assert configs[0]['cluster'] == configs[1]['cluster']
  assert [c['task'] for c in configs] == [{
      'type': 'worker',
      'index': 0
  }, {
      'type': 'worker',
      'index': 1
  }]
  if cluster:
    assert configs[0]['cluster'] == {'worker': cluster}


# ---- launch/local.sh


@pytest.mark.slow
def test_two_local_workers_train_one_model_and_only_the_chief_writes(tmp_path, prepared_mnist):
  # A dataset in tfds's files, not synthetic: on this CPU oneDNN's graph rewrites once broke
  # multi-worker validation on such data only (trainer/cli.py turns them off under TF_CONFIG).
  run_dir, worker_tmp = tmp_path / 'run', tmp_path / 'tmp'
  worker_tmp.mkdir()
  result = launch('launch/local.sh',
                  '2',
                  '--',
                  *TINY_RUN,
                  '--dataset=mnist',
                  f'--data_dir={prepared_mnist}',
                  '--nodownload',
                  f'--run_dir={run_dir}',
                  env={'TMPDIR': str(worker_tmp)},
                  timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  out = result.stdout
  assert 'All 2 workers finished' in out
  # Both processes trained one model under MultiWorkerMirroredStrategy: two replicas in
  # sync, and the same test loss, since they evaluated it together.
  for worker in (0, 1):
    assert any(
        line.startswith(f'[worker {worker}]') and
        '2 replica(s), global batch 8, precision float32' in line
        for line in out.splitlines()), out[-3000:]
  test_losses = {line.split('] ', 1)[1] for line in out.splitlines() if 'Test loss' in line}
  assert len(test_losses) == 1, test_losses

  # One set of outputs, the chief's.
  assert (run_dir / 'metrics.json').exists()
  assert (run_dir / 'export' / 'saved_model.pb').exists()
  assert (run_dir / 'checkpoints' / 'best.index').exists()
  with open(run_dir / 'history.csv') as f:
    assert len(f.read().splitlines()) == 1 + 1  # a header and one epoch, not one per worker
  assert not glob.glob(str(run_dir / '**' / 'workertemp*'), recursive=True)
  # The other worker's throwaway run folder is gone.
  assert not glob.glob(str(worker_tmp / 'worker_*'))


def fake_python(tmp_path, worker_1_fails):
  """A stand-in for `python -m trainer.main`: writes its pid to workerI.pid and sleeps for a
  minute, unless it is worker 1 and `worker_1_fails`."""
  path = tmp_path / 'python'
  path.write_text(f"""#!/bin/bash
if [[ $1 == - ]]; then exec {sys.executable} "$@"; fi  # local.sh's free-port helper
case $TF_CONFIG in *'"index": 1'*) index=1 ;; *) index=0 ;; esac
echo $$ > {tmp_path}/worker$index.pid
if [[ $index == 1 && {str(worker_1_fails).lower()} == true ]]; then echo 'worker 1 breaks'; exit 3; fi
exec sleep 60
""")
  path.chmod(0o755)
  return str(path)


@pytest.mark.slow
def test_when_one_worker_fails_local_sh_stops_the_others_and_fails(tmp_path):
  start = time.monotonic()
  result = launch('launch/local.sh',
                  '2',
                  '--',
                  '--epochs=1',
                  env={'PYTHON': fake_python(tmp_path, worker_1_fails=True)})
  assert result.returncode == 3
  assert time.monotonic() - start < 30  # not the minute worker 0 would sleep
  assert 'error: worker 1 exited with status 3; stopping the other workers' in result.stderr
  assert '[worker 1] worker 1 breaks' in result.stdout
  assert not _running(int((tmp_path / 'worker0.pid').read_text()))


@pytest.mark.slow
def test_a_killed_local_sh_takes_its_workers_with_it(tmp_path):
  """Else a re-run would train beside the old workers, in the same run folder."""
  launcher = subprocess.Popen([os.path.join(ROOT, 'launch/local.sh'), '2', '--', '--epochs=1'],
                              cwd=ROOT,
                              env={
                                  **os.environ, 'PYTHON': fake_python(tmp_path, False)
                              })
  pid_files = [tmp_path / 'worker0.pid', tmp_path / 'worker1.pid']
  deadline = time.monotonic() + 30
  while not all(f.exists() and f.read_text().strip() for f in pid_files):
    assert time.monotonic() < deadline, 'the workers did not start'
    time.sleep(0.1)
  launcher.terminate()
  assert launcher.wait(timeout=30) == 143
  for f in pid_files:
    assert not _running(int(f.read_text()))


def _running(pid, wait_s=5):
  """Whether `pid` is still alive after up to `wait_s` seconds (it may still be exiting)."""
  deadline = time.monotonic() + wait_s
  while time.monotonic() < deadline:
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return False
    time.sleep(0.1)
  return True


def test_local_dry_run_gives_two_workers_one_cluster_on_localhost():
  flags = ['--run_dir=runs/with space', "--run_name=it's"]
  result = launch('launch/local.sh', '--dry-run', '2', '--', *flags)
  assert result.returncode == 0, result.stderr
  configs = tf_configs(result.stdout)
  assert_one_cluster_two_tasks(configs)
  assert all(address.startswith('localhost:') for address in configs[0]['cluster']['worker'])
  for line in result.stdout.splitlines():  # the flags reach the trainer as given
    assert shlex.split(line)[1:] == [sys.executable, '-m', 'trainer.main', *flags]


# ---- launch/ssh.sh and launch/gce.sh: what they would run


def test_ssh_dry_run_gives_each_host_its_task_in_one_cluster():
  result = launch('launch/ssh.sh', '--dry-run', '--hosts=me@gpu1,gpu2', '--port=3000', '--',
                  '--num_gpus=2', '--run_dir=gs://bucket/runs/a')
  assert result.returncode == 0, result.stderr
  assert_one_cluster_two_tasks(tf_configs(result.stdout), ['gpu1:3000', 'gpu2:3000'])
  assert 'ssh -o BatchMode=yes me@gpu1 bash -s' in result.stdout
  assert 'ssh -o BatchMode=yes gpu2 bash -s' in result.stdout
  assert result.stdout.count('-m trainer.main --num_gpus=2 --run_dir=gs://bucket/runs/a') == 2


def test_gce_dry_run_trains_one_worker_per_vm_in_one_cluster():
  result = launch('launch/gce.sh', '--dry-run', '--workers=2', '--name=mnist', '--gpus=4', 'train',
                  '--', '--run_dir=gs://bucket/runs/a')
  assert result.returncode == 0, result.stderr
  assert_one_cluster_two_tasks(tf_configs(result.stdout), ['mnist-0:2222', 'mnist-1:2222'])
  assert 'gcloud compute ssh mnist-0 --zone=us-central1-a' in result.stdout
  assert result.stdout.count('-m trainer.main --num_gpus=4 --run_dir=gs://bucket/runs/a') == 2


def test_gce_dry_run_creates_gpu_vms_that_install_the_package_and_deletes_them(tmp_path):
  create = launch('launch/gce.sh', '--dry-run', '--workers=2', '--spot',
                  '--staging=gs://bucket/staging', f'--log_dir={tmp_path}', 'create')
  assert create.returncode == 0, create.stderr
  commands = [
      shlex.split(line)
      for line in create.stdout.splitlines()
      if line.startswith('gcloud compute instances create')
  ]
  assert len(commands) == 1
  assert commands[0][4:6] == ['densenet-0', 'densenet-1']
  assert {
      '--accelerator=type=nvidia-tesla-t4,count=1', '--maintenance-policy=TERMINATE',
      '--provisioning-model=SPOT', f'--metadata-from-file=startup-script={tmp_path}/startup.sh',
      '--image-project=deeplearning-platform-release'
  } <= set(commands[0])
  assert 'gcloud storage cp' in create.stdout  # the wheel of this checkout goes to staging
  assert "tensorflow\\[and-cuda\\,gcs-filesystem\\]==2.21.\\*" in create.stdout
  assert not (tmp_path / 'startup.sh').exists()  # a dry run writes nothing

  delete = launch('launch/gce.sh', '--dry-run', '--workers=2', 'delete')
  assert delete.stdout.strip() == ('gcloud compute instances delete densenet-0 densenet-1 '
                                   '--zone=us-central1-a --quiet')


def test_gce_refuses_values_that_would_reach_a_shell_or_escape_the_log_folder(tmp_path):
  """Every value that reaches the workers' script, a path or gcloud's arguments is checked:
  with --dry-run nothing runs, so an accepted injection shows in the printed script."""
  injections = [
      ('--port', "1'; touch pwned; echo '"),
      ('--name', "x'; touch pwned; echo '"),
      ('--name', '../../x'),
      ('--zone', 'us-central1-a --project=someone-else'),
      ('--project', 'p; touch pwned'),
      ('--machine_type', 'n1-standard-8 --metadata=x=y'),
      ('--accelerator', 'nvidia-tesla-t4,count=8'),
  ]
  for flag, value in injections:
    result = launch('launch/gce.sh', '--dry-run', f'{flag}={value}', f'--log_dir={tmp_path}',
                    'train', '--', '--run_dir=gs://bucket/runs/a')
    assert result.returncode == 2, (flag, value, result.stdout)
    assert result.stdout == ''
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f'error: {flag}=') and '; ' in lines[0], lines
  assert not list(tmp_path.iterdir())


def test_gce_worker_scripts_quote_what_they_pass_on(tmp_path):
  """The script each VM runs, run here by bash with a stand-in python: the trainer flags
  arrive as given, whatever they hold, and TF_CONFIG as built."""
  flags = ['--run_dir=gs://bucket/runs/a', "--run_name=it's $(touch pwned)", '--note=a;b c']
  result = launch('launch/gce.sh', '--dry-run', '--gpus=0', 'train', '--', *flags)
  assert result.returncode == 0, result.stderr
  scripts = re.findall(r"<<'EOF'\n(.*?)\nEOF\n", result.stdout, re.S)
  assert len(scripts) == 2
  fake = tmp_path / 'opt/densenet/venv/bin/python'
  fake.parent.mkdir(parents=True)
  fake.write_text('#!/bin/bash\nprintf "%s\\n" "$TF_CONFIG" "$@"\n')
  fake.chmod(0o755)
  (tmp_path / 'opt/densenet/READY').touch()
  for index, script in enumerate(scripts):
    # The VM's paths, moved under tmp_path.
    script = script.replace('/opt/densenet', f'{tmp_path}/opt/densenet')
    run = subprocess.run(['bash', '-c', script],
                         cwd=tmp_path,
                         capture_output=True,
                         text=True,
                         check=False)
    assert run.returncode == 0, run.stderr
    config, *argv = run.stdout.splitlines()
    assert json.loads(config)['task'] == {'type': 'worker', 'index': index}
    assert argv == ['-m', 'trainer.main', '--num_gpus=0', *flags]
  assert not (tmp_path / 'pwned').exists()


# ---- launch/vertex.sh and launch/k8s.sh: the job files they write, and the command

# Flags that would break a shell line, a YAML scalar or gcloud's comma-separated lists.
AWKWARD_FLAGS = ["--label=it's", '--note=a, b: {c}', '--path=C:\\x "y" $(z)']


def written_file_and_command(dry_run_output):
  """The file a dry run would write, parsed as YAML, and the command it would run after."""
  files = re.findall(r"<<'EOF'\n(.*?)\nEOF\n", dry_run_output, re.S)
  assert len(files) == 1, dry_run_output
  return yaml.safe_load(files[0]), shlex.split(dry_run_output.strip().splitlines()[-1])


# google.cloud.aiplatform_v1's CustomJobSpec and the messages in it, as JSON names them: each
# field, and the message it holds (None: a value). A fixed copy, so that a fresh virtualenv
# without google-cloud-aiplatform (a large install) still checks every name the script writes;
# where the package is installed, the spec is parsed by it too, and this copy checked against it.
CUSTOM_JOB_SPEC = {
    'CustomJobSpec': {
        'persistentResourceId': None,
        'workerPoolSpecs': 'WorkerPoolSpec',
        'scheduling': None,
        'serviceAccount': None,
        'network': None,
        'reservedIpRanges': None,
        'pscInterfaceConfig': None,
        'baseOutputDirectory': 'GcsDestination',
        'protectedArtifactLocationId': None,
        'tensorboard': None,
        'enableWebAccess': None,
        'enableDashboardAccess': None,
        'experiment': None,
        'experimentRun': None,
        'models': None,
    },
    'WorkerPoolSpec': {
        'containerSpec': 'ContainerSpec',
        'pythonPackageSpec': None,
        'machineSpec': 'MachineSpec',
        'replicaCount': None,
        'nfsMounts': None,
        'lustreMounts': None,
        'diskSpec': None,
    },
    'MachineSpec': {
        'machineType': None,
        'acceleratorType': None,
        'acceleratorCount': None,
        'gpuPartitionSize': None,
        'tpuTopology': None,
        'reservationAffinity': None,
    },
    'ContainerSpec': {
        'imageUri': None,
        'command': None,
        'args': None,
        'env': None
    },
    'GcsDestination': {
        'outputUriPrefix': None
    },
}


def aiplatform_v1():
  """google.cloud.aiplatform_v1, or None where google-cloud-aiplatform is not installed."""
  try:
    return importlib.import_module('google.cloud.aiplatform_v1')
  except ImportError:
    return None


def assert_is_a_custom_job_spec(spec, message='CustomJobSpec'):
  """Every field of `spec` is one that `message` has, recursively; and where the package is
  installed, it parses `spec` strictly (unknown fields and enum values fail)."""
  items = spec if isinstance(spec, list) else [spec]
  for item in items:
    assert set(item) <= set(CUSTOM_JOB_SPEC[message]), (message, set(item))
    for field, value in item.items():
      if CUSTOM_JOB_SPEC[message][field]:
        assert_is_a_custom_job_spec(value, CUSTOM_JOB_SPEC[message][field])
  package = aiplatform_v1()
  if package and message == 'CustomJobSpec':
    json_format.ParseDict(spec, package.CustomJobSpec.pb(package.CustomJobSpec()))


@pytest.mark.skipif(aiplatform_v1() is None, reason='pip install google-cloud-aiplatform')
def test_the_fixed_copy_of_custom_job_spec_is_the_package_s():
  package = aiplatform_v1()
  for message, fields in CUSTOM_JOB_SPEC.items():
    descriptor = getattr(package, message).pb().DESCRIPTOR
    assert {field.json_name for field in descriptor.fields} == set(fields), message
    for field in descriptor.fields:
      held = field.message_type.name if field.message_type else None
      assert fields[field.json_name] in (None, held), (message, field.json_name)


def test_vertex_dry_run_puts_the_chief_in_pool_0_and_the_other_replicas_in_pool_1(tmp_path):
  image = 'us-central1-docker.pkg.dev/proj/repo/densenet:1'
  result = launch('launch/vertex.sh', '--dry-run', f'--image={image}', '--replicas=3', '--gpus=2',
                  '--accelerator=NVIDIA_L4', '--machine_type=g2-standard-24',
                  '--output_dir=gs://bucket/runs/a', '--project=my-project', '--name=mnist',
                  f'--log_dir={tmp_path}', '--', *AWKWARD_FLAGS)
  assert result.returncode == 0, result.stderr
  spec, command = written_file_and_command(result.stdout)
  pool = {
      'machineSpec': {
          'machineType': 'g2-standard-24',
          'acceleratorType': 'NVIDIA_L4',
          'acceleratorCount': 2
      },
      'containerSpec': {
          'imageUri': image,
          'args': ['--num_gpus=2', *AWKWARD_FLAGS]
      }
  }
  assert_is_a_custom_job_spec(spec)
  assert spec == {
      'workerPoolSpecs': [{
          **pool, 'replicaCount': 1
      }, {
          **pool, 'replicaCount': 2
      }],
      'baseOutputDirectory': {
          'outputUriPrefix': 'gs://bucket/runs/a'
      }
  }
  assert command == [
      'gcloud', 'ai', 'custom-jobs', 'create', '--region=us-central1', '--display-name=mnist',
      f'--config={tmp_path}/job.yaml', '--project=my-project'
  ]
  assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_vertex_one_replica_is_a_chief_alone(tmp_path):
  result = launch('launch/vertex.sh', '--dry-run', '--image=gcr.io/proj/densenet', '--gpus=0',
                  f'--log_dir={tmp_path}', '--', '--run_dir=gs://bucket/runs/a')
  assert result.returncode == 0, result.stderr
  spec, _ = written_file_and_command(result.stdout)
  assert_is_a_custom_job_spec(spec)
  assert spec == {
      'workerPoolSpecs': [{
          'machineSpec': {
              'machineType': 'n1-standard-8'
          },
          'replicaCount': 1,
          'containerSpec': {
              'imageUri': 'gcr.io/proj/densenet',
              'args': ['--num_gpus=0', '--run_dir=gs://bucket/runs/a']
          }
      }]
  }


TENSORBOARD = 'projects/my-project/locations/us-central1/tensorboards/123'
SERVICE_ACCOUNT = 'trainer@my-project.iam.gserviceaccount.com'


def test_vertex_streams_the_logs_to_a_tensorboard_instance(tmp_path):
  result = launch('launch/vertex.sh', '--dry-run', '--image=gcr.io/proj/densenet',
                  '--output_dir=gs://bucket/runs/a', f'--tensorboard={TENSORBOARD}',
                  f'--service_account={SERVICE_ACCOUNT}', f'--log_dir={tmp_path}', '--',
                  '--epochs=1')
  assert result.returncode == 0, result.stderr
  spec, _ = written_file_and_command(result.stdout)
  assert_is_a_custom_job_spec(spec)
  assert (spec['tensorboard'], spec['serviceAccount']) == (TENSORBOARD, SERVICE_ACCOUNT)
  assert spec['baseOutputDirectory'] == {'outputUriPrefix': 'gs://bucket/runs/a'}


@pytest.mark.parametrize('args, expected', [
    ([f'--tensorboard={TENSORBOARD}'], '--tensorboard needs --service_account'),
    ([
        f'--tensorboard={TENSORBOARD}', f'--service_account={SERVICE_ACCOUNT}',
        '--region=europe-west4'
    ], '--tensorboard is in us-central1 but the job in --region=europe-west4'),
    ([
        f'--tensorboard={TENSORBOARD}', f'--service_account={SERVICE_ACCOUNT}', '--',
        '--run_dir=gs://bucket/runs/b'
    ], 'drop --run_dir'),
    (['--tensorboard=my-board', f'--service_account={SERVICE_ACCOUNT}'
     ], '--tensorboard=my-board is not a TensorBoard instance'),
    (['--service_account=trainer'], '--service_account=trainer is not a service account'),
])
def test_vertex_refuses_a_tensorboard_the_logs_would_not_reach(args, expected):
  result = launch('launch/vertex.sh', '--dry-run', '--image=x', '--output_dir=gs://bucket/a', *args)
  assert result.returncode == 2, result.stdout
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ') and expected in lines[0], lines


def test_k8s_dry_run_renders_a_tfjob_of_a_chief_and_workers(tmp_path):
  result = launch('launch/k8s.sh', '--dry-run', '--image=registry.example/densenet:1',
                  '--replicas=3', '--gpus=2', '--name=mnist', '--namespace=ml', '--pvc=shared-runs',
                  '--service_account=trainer', f'--log_dir={tmp_path}', '--', '--run_dir=/runs/a',
                  *AWKWARD_FLAGS)
  assert result.returncode == 0, result.stderr
  job, command = written_file_and_command(result.stdout)
  assert command == ['kubectl', 'create', '-f', f'{tmp_path}/tfjob.yaml']
  # What the TFJob schema requires, and what this job asks for.
  assert (job['apiVersion'], job['kind']) == ('kubeflow.org/v1', 'TFJob')
  assert job['metadata'] == {'name': 'mnist', 'namespace': 'ml'}
  replicas = job['spec']['tfReplicaSpecs']
  assert {kind: spec['replicas'] for kind, spec in replicas.items()} == {'Chief': 1, 'Worker': 2}
  for spec in replicas.values():
    assert spec['restartPolicy'] == 'OnFailure'
    pod = spec['template']['spec']
    assert pod['serviceAccountName'] == 'trainer'
    assert pod['volumes'] == [{
        'name': 'runs',
        'persistentVolumeClaim': {
            'claimName': 'shared-runs'
        }
    }]
    container, = pod['containers']
    assert container == {
        'name': 'tensorflow',
        'image': 'registry.example/densenet:1',
        'args': ['--num_gpus=2', '--run_dir=/runs/a', *AWKWARD_FLAGS],
        'resources': {
            'limits': {
                'nvidia.com/gpu': 2
            }
        },
        'volumeMounts': [{
            'name': 'runs',
            'mountPath': '/runs'
        }]
    }
  assert not list(tmp_path.iterdir())


def test_k8s_one_pod_is_a_chief_alone_on_the_cpu(tmp_path):
  result = launch('launch/k8s.sh', '--dry-run', '--image=densenet', '--replicas=1', '--gpus=0',
                  f'--log_dir={tmp_path}', '--', '--run_dir=gs://bucket/runs/a')
  assert result.returncode == 0, result.stderr
  job, _ = written_file_and_command(result.stdout)
  assert list(job['spec']['tfReplicaSpecs']) == ['Chief']
  assert job['spec']['tfReplicaSpecs']['Chief']['template']['spec'] == {
      'containers': [{
          'name': 'tensorflow',
          'image': 'densenet',
          'args': ['--num_gpus=0', '--run_dir=gs://bucket/runs/a']
      }]
  }


# ---- The container image: no Docker daemon here, so what it is built from and runs


def dockerfile():
  """The Dockerfile's instructions as (INSTRUCTION, arguments) pairs."""
  with open(os.path.join(ROOT, 'Dockerfile')) as f:
    text = f.read().replace('\\\n', ' ')
  lines = [line.strip() for line in text.splitlines()]
  return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith('#')]


def setup_cfg():
  config = configparser.ConfigParser()
  config.read(os.path.join(ROOT, 'setup.cfg'))
  return config


def test_the_image_runs_the_documented_command_on_tensorflow_s_image_of_the_pinned_version():
  instructions = dockerfile()
  assert ('ENTRYPOINT', '["python", "-m", "trainer.main"]') in instructions
  base = dict(i[1].split('=', 1) for i in instructions if i[0] == 'ARG')['BASE_IMAGE']
  assert ('FROM', '${BASE_IMAGE}') in instructions
  pin = re.search(r'^tensorflow==(\S+)\.\*$', setup_cfg()['options']['install_requires'], re.M)
  assert re.fullmatch(rf'tensorflow/tensorflow:{re.escape(pin[1])}\.\d+-gpu', base), base


def test_the_image_installs_the_package_the_cpu_install_does(tmp_path):
  """A wheel built from only what the Dockerfile copies holds every module of trainer/ and
  the package's requirements, and pip installs it with extras that setup.cfg defines."""
  instructions = dockerfile()
  copied = [path for i in instructions if i[0] == 'COPY' for path in i[1].split()[:-1]]
  context = tmp_path / 'context'
  for path in copied:
    source = os.path.join(ROOT, path)
    if os.path.isdir(source):
      shutil.copytree(source, context / path, ignore=shutil.ignore_patterns('__pycache__'))
    else:
      context.mkdir(exist_ok=True)
      shutil.copy(source, context / path)
  # Nothing the image needs is left out of the build context.
  with open(os.path.join(ROOT, '.dockerignore')) as f:
    ignored = {line.strip().rstrip('/') for line in f if line.strip() and line[0] != '#'}
  assert not ignored & {path.rstrip('/') for path in copied}
  assert {'.git', 'runs', 'logs'} <= ignored

  installs = [i[1] for i in instructions if i[0] == 'RUN' and 'pip install' in i[1]]
  assert len(installs) == 1
  target = shlex.split(installs[0])[-1]
  extras = re.fullmatch(r'\.\[([-a-z,]+)\]', target)[1].split(',')
  assert set(extras) <= set(setup_cfg()['options.extras_require'])

  subprocess.run([
      sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation',
      f'--wheel-dir={tmp_path}', '.'
  ],
                 cwd=context,
                 check=True,
                 capture_output=True)
  wheel, = glob.glob(str(tmp_path / '*.whl'))
  with zipfile.ZipFile(wheel) as z:
    names = z.namelist()
    metadata = z.read(next(n for n in names if n.endswith('/METADATA'))).decode()
  modules = {os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, 'trainer', '*.py'))}
  assert {n for n in names if n.startswith('trainer/')} == modules
  required = {
      _project(line)
      for line in setup_cfg()['options']['install_requires'].splitlines()
      if line and not line.startswith('#')
  }
  assert {
      _project(line[len('Requires-Dist: '):])
      for line in metadata.splitlines()
      if line.startswith('Requires-Dist: ') and 'extra ==' not in line
  } == required


def _project(requirement):
  """A requirement's project name, normalised as pip compares them."""
  return re.sub(r'[-_.]+', '-', re.match(r'[\w.-]+', requirement)[0]).lower()


# ---- All three


# Bash arithmetic reads a leading zero as octal: 08 and 09 are errors there, and 010 is 8.
@pytest.mark.parametrize('script, args', [
    ('launch/gce.sh', ['--package=foo', 'create']),
    ('launch/gce.sh', ['train', '--', '--run_dir=gs://bucket/runs/a']),
    ('launch/vertex.sh', ['--image=x', '--output_dir=gs://bucket/a']),
    ('launch/k8s.sh', ['--image=x', '--', '--run_dir=gs://bucket/a']),
])
@pytest.mark.parametrize('gpus', ['08', '09', '010', '+1', ' 1'])
def test_gpu_counts_are_plain_decimal_numbers(script, args, gpus):
  result = launch(script, '--dry-run', f'--gpus={gpus}', *args)
  assert result.returncode == 2, result.stdout
  assert result.stdout == ''
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: --gpus=') and 'decimal' in lines[0], lines


def test_ten_gpus_are_requested_as_ten(tmp_path):
  create = launch('launch/gce.sh', '--dry-run', '--gpus=10', '--package=foo',
                  f'--log_dir={tmp_path}', 'create')
  assert create.returncode == 0, create.stderr
  command, = [shlex.split(line) for line in create.stdout.splitlines() if line.startswith('gcloud')]
  assert '--accelerator=type=nvidia-tesla-t4,count=10' in command
  vertex = launch('launch/vertex.sh', '--dry-run', '--image=x', '--gpus=10',
                  '--output_dir=gs://bucket/a', f'--log_dir={tmp_path}')
  spec, _ = written_file_and_command(vertex.stdout)
  assert spec['workerPoolSpecs'][0]['machineSpec']['acceleratorCount'] == 10
  assert spec['workerPoolSpecs'][0]['containerSpec']['args'] == ['--num_gpus=10']


# The trainer (absl) takes the last of repeated flags, in the forms --f=v, --f v, -f=v and -f v.
@pytest.mark.parametrize('script, args', [
    ('launch/gce.sh', ['train', '--']),
    ('launch/vertex.sh', ['--image=x', '--output_dir=gs://bucket/a', '--']),
    ('launch/k8s.sh', ['--image=x', '--pvc=claim', '--']),
])
@pytest.mark.parametrize('run_dirs', [
    ['--run_dir=gs://bucket/r', '--run_dir=runs/local'],
    ['--run_dir=gs://bucket/r', '--run_dir', 'runs/local'],
    ['--run_dir=gs://bucket/r', '-run_dir=runs/local'],
])
def test_the_run_folder_checked_is_the_one_the_trainer_uses(script, args, run_dirs):
  result = launch(script, '--dry-run', *args, *run_dirs)
  assert result.returncode == 2, result.stdout
  assert result.stdout == ''
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ') and 'runs/local' in lines[0], lines


@pytest.mark.parametrize('script, args', [
    ('launch/gce.sh', ['train', '--', '--run_dir=runs/local', '--run_dir=gs://bucket/r']),
    ('launch/gce.sh', ['train', '--', '--run_dir', 'gs://bucket/r']),
    ('launch/vertex.sh', ['--image=x', '--', '--run_dir=runs/local', '--run_dir=gs://bucket/r']),
    ('launch/k8s.sh', ['--image=x', '--pvc=claim', '--', '--run_dir=gs://b/r', '--run_dir=/runs/a'
                      ]),
])
def test_a_later_shared_run_folder_wins(script, args):
  result = launch(script, '--dry-run', *args)
  assert result.returncode == 0, result.stderr


@pytest.mark.parametrize('hosts', ['-Fevil.cfg', 'gpu1,-oProxyCommand', '-Fevil@gpu1', 'me@-Fevil'])
def test_ssh_hosts_cannot_be_taken_for_options(hosts):
  result = launch('launch/ssh.sh', '--dry-run', f'--hosts={hosts}', '--', '--epochs=1')
  assert result.returncode == 2, result.stdout
  assert result.stdout == ''
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(
      'error: --hosts entry') and "'-'" in lines[0], lines


@pytest.mark.parametrize('script', SCRIPTS)
def test_help(script):
  result = launch(script, '--help')
  assert result.returncode == 0 and result.stdout.startswith('Usage: ' + script)


@pytest.mark.parametrize('script, args, expected', [
    ('launch/local.sh', ['--', '--epochs=1'], 'give the number of workers'),
    ('launch/ssh.sh', ['--', '--epochs=1'], 'give the hosts'),
    ('launch/ssh.sh', ['--hosts=a b'], "--hosts entry 'a b' is not [user@]host"),
    ('launch/gce.sh', ['--', '--epochs=1'], 'say what to do: create, train or delete'),
    ('launch/gce.sh', ['train', '--', '--run_dir=runs/local'], 'train needs --run_dir=gs://'),
    ('launch/gce.sh', ['create'], 'create needs --staging=gs://'),
    ('launch/vertex.sh', ['--', '--run_dir=gs://bucket/a'], 'give the image'),
    ('launch/vertex.sh', ['--image=a b', '--output_dir=gs://bucket/a'], '--image=a\\ b is not'),
    ('launch/vertex.sh', ['--image=x'], 'needs a Cloud Storage folder'),
    ('launch/vertex.sh', ['--image=x', '--', '--run_dir=runs/a'], 'is not on Cloud Storage'),
    ('launch/vertex.sh', ['--image=x', '--output_dir=gs://bucket/a', '--', '--run_name=a'
                         ], "--run_name puts the run folder on the machine's disk"),
    ('launch/vertex.sh', [
        '--image=x', '--accelerator=nvidia-tesla-t4', '--output_dir=gs://bucket/a'
    ], '--accelerator=nvidia-tesla-t4 is not a Vertex AI GPU type'),
    ('launch/vertex.sh', ['--image=x', '--output_dir=gs://bucket/a', '--', '--x=a\nb'
                         ], "trainer flag $'--x=a\\nb' holds a control character"),
    ('launch/k8s.sh', ['--', '--run_dir=gs://bucket/a'], 'give the image'),
    ('launch/k8s.sh', ['--image=x', '--', '--run_dir=/runs/a'], 'need a run folder they all see'),
    ('launch/k8s.sh', ['--image=x', '--name=Mnist_1', '--', '--run_dir=gs://bucket/a'
                      ], '--name=Mnist_1 is not a TFJob name'),
    ('launch/k8s.sh', ['--image=x', '--pvc=a"b: c', '--', '--run_dir=/runs/a'
                      ], '--pvc=a\\"b:\\ c is not a PersistentVolumeClaim name'),
    ('launch/k8s.sh', ['--image=x', '--replicas=0', '--', '--run_dir=gs://bucket/a'
                      ], '--replicas=0 is not a number of pods'),
])
def test_bad_arguments_end_in_one_line(script, args, expected):
  result = launch(script, '--dry-run', *args)
  assert result.returncode == 2
  assert result.stderr.strip().startswith('error: ') and expected in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(not shutil.which('shellcheck'), reason='shellcheck is not installed')
def test_the_scripts_pass_shellcheck():
  result = subprocess.run(['shellcheck', '-x', *SCRIPTS, 'launch/lib.sh'],
                          cwd=ROOT,
                          capture_output=True,
                          text=True,
                          check=False)
  assert result.returncode == 0, result.stdout
