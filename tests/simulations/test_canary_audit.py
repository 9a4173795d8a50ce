from fedrec.simulations.canary_audit import audit_device_training


def test_honest_device_training_passes_and_broken_noise_is_caught():
    honest = audit_device_training(noise_multiplier=3.0, seed=0)
    assert honest.epsilon_lower_bound <= honest.claimed_epsilon
    broken = audit_device_training(noise_multiplier=0.0, claimed_noise_multiplier=3.0, seed=0)
    assert broken.claimed_epsilon == honest.claimed_epsilon
    assert broken.epsilon_lower_bound > broken.claimed_epsilon
    assert broken.v > honest.v


def test_spectral_release_passes_and_a_noiseless_release_is_caught():
    from fedrec.simulations.canary_audit import audit_spectral_release

    honest = audit_spectral_release(noise_multiplier=1.0, seed=0)
    assert honest.epsilon_lower_bound <= honest.claimed_epsilon
    broken = audit_spectral_release(noise_multiplier=0.0, claimed_noise_multiplier=1.0, seed=0)
    assert broken.epsilon_lower_bound > broken.claimed_epsilon
    assert broken.v > honest.v
