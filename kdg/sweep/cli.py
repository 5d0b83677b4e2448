"""`kdg sweep`: a click command that kdg's CLI registers with
`main.add_command(sweep)`; also runnable alone
(`python -c "from kdg.sweep.cli import sweep; sweep()"`).

The sweep process itself trains nothing: every job is a `kdg train`
subprocess (or a Ray task running one) with its own Keras backend, chosen
per job from --backend, the sweep file, the base recipe or $KERAS_BACKEND.
"""

from __future__ import annotations

import sys

import click

from kdg.recipes import BACKENDS


def _fail(message, code: int = 2):
    click.echo(click.style("error: ", fg="red", bold=True) + str(message), err=True)
    sys.exit(code)


def _dry_run_text(jobs, statuses, problems) -> str:
    lines = []
    for job, state in zip(jobs, statuses):
        values = ", ".join(f"{k}={_short(v)}" for k, v in job.hparams.items()) or "defaults"
        label = "invalid" if job in problems else state.state
        lines.append(f"{label:<11} {job.name}  {values}")
        if job in problems:
            lines.append(f"            cannot run: {problems[job]}")
    lines.append(f"{len(jobs)} job(s)" + (f", {len(problems)} cannot run" if problems else ""))
    return "\n".join(lines)


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_short(v)}" for k, v in value.items()) + "}"
    return str(value)


@click.command(name="sweep", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("sweep_file", type=click.Path(dir_okay=False))
@click.option("--launcher", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: subprocesses on this machine; ray: Ray tasks.")
@click.option("--jobs", "-j", "parallel", type=click.IntRange(min=1), default=None,
              help="local: jobs at a time (default 1). ray: most tasks in flight (default all), "
                   "and the CPUs of a Ray instance the command starts.")
@click.option("--ray-address", default=None,
              help="An existing Ray cluster (e.g. auto, ray://host:10001); default: start a "
                   "local one.")
@click.option("--status", "show_status", is_flag=True,
              help="Show each job's state (done, running, failed, stopped, not started).")
@click.option("--dry-run", is_flag=True, help="List the jobs and their hyperparameters; run nothing.")
@click.option("--backend", type=click.Choice(BACKENDS), default=None,
              help="Keras backend of the jobs (default: the sweep file's, the base recipe's, "
                   "else $KERAS_BACKEND).")
@click.option("--only", multiple=True, metavar="KEY=VALUE",
              help="Only the matching jobs, e.g. --only algorithm=fish --only test_envs=0 "
                   "(keys: dataset, algorithm, test_envs, hparams_seed, trial_seed, hash, or a "
                   "dotted recipe key; a key given twice matches either value).")
def sweep(sweep_file, launcher, parallel, ray_address, show_status, dry_run, backend, only):
    """Run (or resume) the sweep described by SWEEP_FILE.

    \b
    Each job is one resolved recipe trained by `kdg train` in its own process,
    in <output_dir>/<dataset>/<algorithm>/test<envs>/h<h>_t<t>_<hash>/.
    Run the command again to resume: finished jobs are skipped, killed ones
    continue from their checkpoint, failed ones are retried. A failed job's
    error stays in its error.txt.

    \b
    Examples:
      kdg sweep sweeps/digits.yaml --jobs 2
      kdg sweep sweeps/digits.yaml --status
      kdg sweep sweeps/digits.yaml --dry-run --only algorithm=corgrad --only test_envs=0
      kdg sweep sweeps/pacs.yaml --launcher ray --ray-address auto
      kdg report runs/digits
    """
    from kdg import sweep as sweep_lib
    from kdg.recipes import RecipeError
    from kdg.sweep import jobs as jobs_lib

    try:
        loaded = sweep_lib.load_sweep(sweep_file, backend=backend)
        if show_status or dry_run:
            rows = sweep_lib.status(loaded, only)
            if show_status:
                click.echo(sweep_lib.format_status(rows, loaded.output_dir))
            else:
                jobs = [j for j, s in rows]
                problems = jobs_lib.check_jobs([j for j, s in rows if s.state != "done"])
                click.echo(_dry_run_text(jobs, [s for _, s in rows], problems))
                if problems:
                    _fail(f"{len(problems)} job(s) cannot run (marked 'invalid' above): "
                          "change the sweep file (its test_domains, algorithms or base "
                          "recipe), or leave them out with --only.")
            return
        result = sweep_lib.run_sweep(loaded, launcher=launcher, jobs=parallel, only=only,
                                     ray_address=ray_address, echo=click.echo)
    except (sweep_lib.SweepError, RecipeError) as error:
        _fail(error)
    except KeyboardInterrupt:
        click.echo("interrupted: run the same command again to resume.", err=True)
        sys.exit(130)
    failed = result.count("failed")
    click.echo(f"{result.done}/{len(result.jobs)} done, {failed} failed, {result.busy} run by "
               f"another process ({result.done_elsewhere} of them done), "
               f"{result.count('stopped')} stopped. Results: kdg report {loaded.output_dir}")
    if not result.ok:
        sys.exit(1)
