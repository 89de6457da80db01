"""The Python API shown in the README: `import offline_rl as orl` and the four public functions."""

import offline_rl as orl


def test_readme_api_example(tmp_path):
    data = orl.load_dataset("pendulum-medium")
    behaviour = data.summary()["normalized_return_mean"]
    assert 20 < behaviour < 80
    algo = orl.make_algo("td3_bc", data.spec, {"alpha": 2.5}, dataset=data, seed=0)
    result = orl.train(algo, data, steps=200, seed=0, eval_every=100, eval_episodes=2, out_dir=tmp_path,
                       progress=False)
    assert result.status == "completed" and len(result.curve) == 2
    assert result.best_score >= result.final_score
    ev = orl.evaluate(algo.policy(), data.env_id, episodes=2, seed=100, ref_min_score=data.ref_min_score,
                      ref_max_score=data.ref_max_score)
    assert ev.normalized_score == orl.evaluation.normalized_score(ev.mean_return, data.ref_min_score,
                                                                  data.ref_max_score)
    assert "td3_bc" in orl.list_algos()
