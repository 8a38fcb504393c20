from tests.world import World


async def test_the_world_is_built_and_tokens_authenticate(services, world: World):
    actor = await services.credentials.authenticate(world.tokens["patient"])
    assert actor is not None and actor.id == world.patient
